"""``@task.ray_train``: the decorated function is the per-worker training loop; no separate module needed.

A small learning-rate sweep with ``.expand()``: each mapped task is its own Ray job and Train run, and
``pick_best`` compares their metrics from XCom. The function and what it uses from this file (``true_line``)
are shipped to the cluster without the DAG file, so the cluster needs no Airflow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

SLOPE, INTERCEPT = 3.0, -1.0


def true_line(x: Any) -> Any:
    return SLOPE * x + INTERCEPT


with DAG(
    dag_id="example_ray_train_taskflow",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["ray", "example", "taskflow"],
    doc_md=__doc__,
) as dag:

    @task
    def sweep() -> list[dict[str, Any]]:
        return [{"lr": 0.1, "epochs": 3}, {"lr": 0.001, "epochs": 3}]

    @task.ray_train(scaling_config={"num_workers": 2}, run_config={"checkpoint_config": {"num_to_keep": 1}})
    def fit_line(config: dict[str, Any]) -> None:
        import os
        import tempfile

        import ray.train
        import ray.train.torch
        import torch

        gen = torch.Generator().manual_seed(ray.train.get_context().get_world_rank())
        x = torch.rand(512, 1, generator=gen) * 4 - 2
        y = true_line(x) + 0.1 * torch.randn(512, 1, generator=gen)
        model = ray.train.torch.prepare_model(torch.nn.Linear(1, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
        for epoch in range(config["epochs"]):
            for start in range(0, 512, 32):
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x[start : start + 32]), y[start : start + 32])
                loss.backward()
                optimizer.step()
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if ray.train.get_context().get_world_rank() == 0:
                    torch.save(model.state_dict(), os.path.join(tmp, "line.pt"))
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report({"epoch": epoch, "loss": loss.item(), "lr": config["lr"]}, checkpoint=checkpoint)

    @task
    def pick_best(results: list[dict[str, Any]]) -> dict[str, Any]:
        best = min(results, key=lambda r: r["metrics"]["loss"])
        print(f"best lr {best['metrics']['lr']}: loss {best['metrics']['loss']:.4f} at {best['checkpoint_path']}")
        return {
            "lr": best["metrics"]["lr"],
            "loss": best["metrics"]["loss"],
            "checkpoint_path": best["checkpoint_path"],
        }

    pick_best(fit_line.expand(config=sweep()))
