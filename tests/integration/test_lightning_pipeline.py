"""The Lightning retraining pipeline through dag.test() on the real local Ray head with 2 workers, tracked on
the session's real MLflow server: it learns the digits, the run has its curves, every training registers a
version, the evaluation loads the ``.ckpt`` it got from XCom, and the promote task moves the ``champion`` alias
only to a better model.
The server's password never shows in the logs, XCom, or the Ray job."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
from ray_train_helpers import (
    all_xcoms,
    get_dag,
    mlflow_artifacts,
    mlflow_history,
    mlflow_tags,
    same_weights,
    states,
    xcom,
)

from airflow_ray_train.hooks.mlflow import MlflowHook
from airflow_ray_train.hooks.ray_train import RayTrainHook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "example_ray_train_lightning"
MODEL = "digits-lightning"


def test_lightning_pipeline_learns_evaluates_and_promotes_only_a_better_model(
    ray_conn, airflow_db, mlflow_conn, mlflow_client, capfd
):
    dag = get_dag(DAG_ID, module=DAG_ID)

    first = dag.test()
    first_states = states(first)
    assert str(first.state) == "success", first_states
    assert first_states["promote"] == "success"

    # Progress a person can follow in the task log: epoch, step and metrics as training goes, each line once.
    log = "".join(capfd.readouterr())
    assert "[lightning] epoch 9 step 170 train_loss=" in log
    assert log.count("[lightning] epoch 1 step 20 ") == 1
    assert "[airflow-ray-train] report 10: train_loss=" in log and " val_accuracy=" in log

    result = xcom(first, "train")
    assert result["status"] == "SUCCEEDED" and result["error"] is None
    # What Lightning logged reaches XCom under its own names, with Ray's epoch and step.
    metrics = result["metrics"]
    assert {"val_loss", "val_accuracy", "train_loss_epoch", "epoch", "step"} <= set(metrics)
    assert metrics["epoch"] == 9 and metrics["val_accuracy"] >= 0.85
    # The checkpoint is the one Lightning wrote, ranked by val_accuracy (top_k=2 -> num_to_keep=2).
    assert len(result["best_checkpoints"]) == 2
    best = max(result["best_checkpoints"], key=lambda r: r["metrics"]["val_accuracy"])
    assert result["best_checkpoint_path"] == best["path"]
    assert (Path(result["best_checkpoint_path"]) / "checkpoint.ckpt").is_file()

    # Progress a person can follow: the whole history as CSV and a learning-curve PNG next to the run.
    with open(result["metrics_history_path"]) as handle:
        history = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in history] == list(range(10))
    assert float(history[-1]["val_loss"]) < float(history[0]["val_loss"])
    curve = Path(result["learning_curve_path"])
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curve.parent == Path(result["manifest_path"]).parent

    # The evaluation task loaded that .ckpt and scored it on the held-out split, far above chance (0.10).
    evaluation = xcom(first, "evaluate")
    assert evaluation["checkpoint_path"] == result["best_checkpoint_path"]
    assert evaluation["checkpoint_file"] == f"{result['best_checkpoint_path']}/checkpoint.ckpt"
    assert evaluation["test_accuracy"] >= 0.85, evaluation
    assert evaluation["val_accuracy"] == best["metrics"]["val_accuracy"]

    # MLflow: one run with every epoch's report as a curve, the params, the links back, the artifacts.
    mlflow = MlflowHook()
    run_id = result["mlflow_run_id"]
    run = mlflow.get_run(run_id)
    assert run["info"]["status"] == "FINISHED" and result["mlflow_run_url"].endswith(f"/runs/{run_id}")
    curve = mlflow_history(mlflow, run_id, "val_accuracy")
    assert len(curve) == 10 and curve[-1][1] == pytest.approx(metrics["val_accuracy"])
    assert [step for step, _ in curve] == sorted(step for step, _ in curve) and curve[-1][0] == metrics["step"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["framework"] == "lightning" and params["train_loop_config.module_kwargs.lr"] == "0.002"
    assert params["scaling_config.num_workers"] == "2" and "lightning_version" in params
    tags = mlflow_tags(run)
    assert tags["airflow.dag_id"] == DAG_ID and tags["airflow.task_id"] == "train"
    assert tags["airflow.run_id"] == first.run_id and tags["airflow.try_number"] == "1"
    assert tags["ray.submission_id"] == result["job_id"]
    assert tags["airflow_ray_train.best_checkpoint_path"] == result["best_checkpoint_path"]
    assert {"metrics_history.csv", "learning_curve.png"} <= mlflow_artifacts(mlflow, run_id)
    # The best checkpoint became version 1 (the mlflow.pytorch flavour), scored, and the champion.
    assert result["model_version"] == "1"
    champion = mlflow.version_by_alias(MODEL, "champion")
    assert champion["version"] == "1" and champion["run_id"] == run_id
    assert champion["source"].startswith("models:/")  # the mlflow.pytorch model logged in the run
    version_tags = {t["key"]: t["value"] for t in champion["tags"]}
    assert float(version_tags["test_accuracy"]) == evaluation["test_accuracy"]
    assert float(version_tags["metric.val_accuracy"]) == best["metrics"]["val_accuracy"]
    promoted = xcom(first, "promote")
    assert promoted["moved"] and (promoted["version"], promoted["previous_version"]) == ("1", None)
    assert promoted["value"] == evaluation["test_accuracy"]
    # MLflow's own client loads the champion: the module trained into the best checkpoint.
    from mlflow import pytorch as mlflow_pytorch
    from ray_train_examples.lightning_digits import DigitsClassifier

    from airflow_ray_train_runtime.lightning import load_module

    served = mlflow_pytorch.load_model(f"models:/{MODEL}@champion")
    assert same_weights(served.state_dict(), load_module(DigitsClassifier, best["path"]).state_dict())

    # A deliberately worse model (one epoch at a tiny learning rate) is evaluated and kept out.
    second = dag.test(run_conf={"max_epochs": 1, "lr": 1e-5})
    second_states = states(second)
    assert str(second.state) == "success", second_states
    assert second_states["promote"] == "success"
    worse = xcom(second, "evaluate")
    assert worse["test_accuracy"] < evaluation["test_accuracy"]
    worse_training = xcom(second, "train")
    assert worse_training["metrics"]["epoch"] == 0
    # Registered as version 2 with its score, but the champion alias stays on version 1.
    assert worse_training["model_version"] == "2" and worse_training["mlflow_run_id"] != run_id
    assert mlflow.version_by_alias(MODEL, "champion")["version"] == "1"
    kept = xcom(second, "promote")
    assert not kept["moved"] and (kept["version"], kept["previous_version"]) == ("2", "1")
    assert (kept["value"], kept["previous_value"]) == (worse["test_accuracy"], evaluation["test_accuracy"])
    worse_tags = {t["key"]: t["value"] for t in mlflow.get_model_version(MODEL, "2")["tags"]}
    assert float(worse_tags["test_accuracy"]) == worse["test_accuracy"]

    # The server's password reached the cluster (the runs were logged) but none of what people see.
    log = log + "".join(capfd.readouterr())
    ray = RayTrainHook()
    for dag_run, training in ((first, result), (second, worse_training)):
        assert mlflow_conn.password not in all_xcoms(dag_run)
        job = ray.get_job_info(training["job_id"])
        assert mlflow_conn.password not in json.dumps(dataclasses.asdict(job), default=str)  # entrypoint, metadata, ...
        assert mlflow_conn.password not in ray.get_job_logs(training["job_id"])
        assert mlflow_conn.password not in json.dumps(mlflow.get_run(training["mlflow_run_id"]))
    assert mlflow_conn.password not in log
    with capfd.disabled():
        print(
            f"\n[lightning pipeline] held-out accuracy: promoted {evaluation['test_accuracy']:.3f}, "
            f"kept out {worse['test_accuracy']:.3f} (chance 0.10)"
        )
