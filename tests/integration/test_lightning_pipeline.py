"""The Lightning retraining pipeline through dag.test() on the real local Ray head with 2 workers: it learns
the digits, the evaluation loads the ``.ckpt`` it got from XCom, and only a better model is promoted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from ray_train_helpers import get_dag, states, xcom

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "example_ray_train_lightning"
MODEL = "digits-lightning"


def test_lightning_pipeline_learns_evaluates_and_promotes_only_a_better_model(
    ray_conn, airflow_db, tmp_path, monkeypatch, capfd
):
    registry = tmp_path / "registry"
    monkeypatch.setenv("AIRFLOW_VAR_RAY_TRAIN_MODEL_REGISTRY", str(registry))
    dag = get_dag(DAG_ID, module=DAG_ID)

    first = dag.test()
    first_states = states(first)
    assert str(first.state) == "success", first_states
    assert first_states["deploy"] == "success" and first_states["keep_champion"] == "skipped"

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

    champion = json.loads((registry / MODEL / "champion.json").read_text())
    assert champion["version"] == "v0001" and champion["run_id"] == first.run_id
    assert champion["metrics"]["test_accuracy"] == evaluation["test_accuracy"]
    assert Path(champion["path"]).is_file() and Path(champion["path"]).name == "checkpoint.ckpt"
    assert json.loads((registry / MODEL / "v0001" / "metrics.json").read_text())["test_accuracy"] > 0.85

    # A deliberately worse model (one epoch at a tiny learning rate) is evaluated and kept out.
    second = dag.test(run_conf={"max_epochs": 1, "lr": 1e-5})
    second_states = states(second)
    assert str(second.state) == "success", second_states
    assert second_states["deploy"] == "skipped" and second_states["keep_champion"] == "success"
    worse = xcom(second, "evaluate")
    assert worse["test_accuracy"] < evaluation["test_accuracy"]
    assert xcom(second, "train")["metrics"]["epoch"] == 0
    assert json.loads((registry / MODEL / "champion.json").read_text()) == champion
    with capfd.disabled():
        print(
            f"\n[lightning pipeline] held-out accuracy: promoted {evaluation['test_accuracy']:.3f}, "
            f"kept out {worse['test_accuracy']:.3f} (chance 0.10)"
        )
    assert sorted(p.name for p in (registry / MODEL).iterdir() if not p.name.startswith(".")) == [
        "champion.json",
        "v0001",
    ]
