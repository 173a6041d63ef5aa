"""Shipping code, through dag.test(): ``@task.ray_train`` the way Airflow's TaskFlow tutorial writes a DAG
(tasks defined inside a ``@dag`` function, the training function reading values and a helper from that
function's scope), and the code that cannot ship, each failing before submission where it can."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task
from ray_train_fault_dags import record_failure

from airflow_ray_train.operators.ray_train import RayTrainOperator


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


dag_function_dag = taskflow_dag_function()

#: Folders the test creates on sys.path before running the DAG: one holds a broken symlink, one is too big.
BROKEN_PACKAGE, BIG_PACKAGE = "shipping_broken_pkg", "shipping_big_pkg"


@dag(
    dag_id="test_ray_train_shipping_bad_input",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=0), "on_failure_callback": record_failure},
)
def shipping_bad_input() -> None:
    lock = threading.Lock()

    @task.ray_train(scaling_config={"num_workers": 1})
    def closure_cannot_travel(config: dict[str, Any]) -> None:
        with lock:
            pass

    @task
    def rows() -> list[int]:
        return [1, 2]

    upstream = rows()

    @task.ray_train(scaling_config={"num_workers": 1})
    def closure_holds_airflow_object(config: dict[str, Any]) -> None:
        print(upstream)

    @task.ray_train(scaling_config={"num_workers": 1})
    def relative_import_in_function(config: dict[str, Any]) -> None:
        from .helpers import prepare  # type: ignore[import-not-found]

        prepare(config)

    closure_cannot_travel({})
    closure_holds_airflow_object({})
    relative_import_in_function({})
    operators = {
        "package_broken_symlink": {"train_func": f"{BROKEN_PACKAGE}.loop:train_func"},
        "package_too_big": {"train_func": f"{BIG_PACKAGE}.loop:train_func"},
        "train_func_from_stdlib": {"train_func": "subprocess:run"},
        "train_func_not_a_function": {"train_func": "ray.train:ScalingConfig", "ship_code": False},
    }
    for task_id, kwargs in operators.items():
        RayTrainOperator(task_id=task_id, scaling_config={"num_workers": 1}, poll_interval=1.0, **kwargs)


bad_input_dag = shipping_bad_input()
