"""``@task.ray_train`` the way Airflow's TaskFlow tutorial writes a DAG: the tasks are defined inside a
``@dag`` function, and the training function reads values and a helper from that function's scope."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import dag, task


@dag(dag_id="test_taskflow_dag_function", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def taskflow_dag_function() -> None:
    slope, intercept = 2.0, 0.5  # the closure: values computed where the DAG is defined

    def target(x: Any) -> Any:
        return slope * x + intercept

    @task.ray_train(scaling_config={"num_workers": 1})
    def fit_closure_line(config: dict[str, Any]) -> None:
        import ray.train
        import torch

        torch.manual_seed(0)
        x = torch.rand(256, 1) * 4 - 2
        y = target(x)
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
        for epoch in range(config["epochs"]):
            for start in range(0, 256, 32):
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x[start : start + 32]), y[start : start + 32])
                loss.backward()
                optimizer.step()
            ray.train.report(
                {"epoch": epoch, "loss": loss.item(), "weight": model.weight.item(), "bias": model.bias.item()}
            )

    fit_closure_line({"lr": 0.1, "epochs": 15})


dag = taskflow_dag_function()
