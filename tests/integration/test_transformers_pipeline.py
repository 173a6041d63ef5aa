"""The Transformers retraining pipeline through dag.test() on the real local Ray head with 2 workers, tracked on
the session's real MLflow server: curves in the run, every fine-tuning a registered version (the
``mlflow.transformers`` flavour), and the promote task moving the ``champion`` alias only for the better model.

The hub cannot be reached here, so the DAG's params point its real loading code (``from_pretrained``,
``load_dataset``) at a tiny BERT built and saved by a fixture and at ``tests/data/reviews.csv`` (480 short
reviews whose label follows the sentiment words in them; chance is 0.5).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from ray_train_helpers import get_dag, mlflow_artifacts, mlflow_history, mlflow_tags, same_weights, states, xcom

from airflow_ray_train.hooks.mlflow import MlflowHook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "example_ray_train_transformers"
MODEL = "text-classifier-transformers"
REVIEWS = Path(__file__).resolve().parents[1] / "data" / "reviews.csv"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT with hidden size 32 and a word-level vocabulary of the CSV, saved with its tokenizer."""
    from ray_train_examples.transformers_text import make_tiny_bert
    from transformers import AutoTokenizer

    path = make_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert")), str(REVIEWS))
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.unk_token_id not in tokenizer("the food was great")["input_ids"]
    return path


def _conf(model: str, **overrides: object) -> dict[str, object]:
    return {
        "model_name_or_path": model,
        "dataset_name": "csv",
        "data_files": str(REVIEWS),
        "max_length": 32,
        "max_train_samples": None,
        "max_eval_samples": None,
        "num_train_epochs": 4,
        "learning_rate": 1e-2,
        "per_device_train_batch_size": 8,
        **overrides,
    }


def test_transformers_pipeline_learns_evaluates_and_promotes_only_a_better_model(
    ray_conn, airflow_db, mlflow_conn, mlflow_client, tiny_bert, capfd
):
    dag = get_dag(DAG_ID, module=DAG_ID)
    # The DAG's own defaults name the hub model and dataset of Ray's guide; the test swaps them in params.
    assert dag.params["model_name_or_path"] == "bert-base-cased" and dag.params["dataset_name"] == "yelp_review_full"

    first = dag.test(run_conf=_conf(tiny_bert))
    first_states = states(first)
    assert str(first.state) == "success", first_states
    assert first_states["promote"] == "success"

    splits = xcom(first, "prepare_data")
    assert {name: sum(1 for _ in open(path)) - 1 for name, path in splits.items()} == {
        "train": 336,
        "validation": 48,
        "test": 96,
    }

    result = xcom(first, "train")
    assert result["status"] == "SUCCEEDED" and result["error"] is None
    # What Trainer logged reaches XCom under its own names.
    metrics = result["metrics"]
    assert {"eval_accuracy", "eval_loss", "loss", "epoch", "step"} <= set(metrics)
    assert metrics["epoch"] == 4.0 and metrics["eval_accuracy"] >= 0.85
    # The checkpoint holds Trainer's own model directory, which from_pretrained loads.
    model_dir = Path(result["best_checkpoint_path"]) / "checkpoint"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()

    with open(result["metrics_history_path"]) as handle:
        history = list(csv.DictReader(handle))
    assert [float(row["epoch"]) for row in history] == [1.0, 2.0, 3.0, 4.0]
    assert "eval_accuracy" in history[0]
    assert Path(result["learning_curve_path"]).read_bytes()[:4] == b"\x89PNG"

    evaluation = xcom(first, "evaluate")
    assert evaluation["checkpoint_path"] == result["best_checkpoint_path"]
    assert evaluation["model_dir"] == str(model_dir)
    assert evaluation["n"] == 96 and evaluation["test_accuracy"] >= 0.85, evaluation
    assert evaluation["eval_accuracy"] == result["best_checkpoints"][0]["metrics"]["eval_accuracy"]

    # MLflow: Trainer's curves by global step, the run's links, and version 1 (mlflow.transformers) as champion.
    mlflow = MlflowHook()
    run_id = result["mlflow_run_id"]
    run = mlflow.get_run(run_id)
    assert run["info"]["status"] == "FINISHED"
    curve = mlflow_history(mlflow, run_id, "eval_accuracy")
    assert [step for step, _ in curve] == [int(float(row["step"])) for row in history]
    assert curve[-1][1] == pytest.approx(metrics["eval_accuracy"])
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["framework"] == "transformers" and params["train_loop_config.model_name_or_path"] == tiny_bert
    assert mlflow_tags(run)["ray.submission_id"] == result["job_id"]
    assert {"metrics_history.csv", "learning_curve.png"} <= mlflow_artifacts(mlflow, run_id)
    assert result["model_version"] == "1"
    champion = mlflow.version_by_alias(MODEL, "champion")
    assert champion["version"] == "1" and champion["run_id"] == run_id
    assert float({t["key"]: t["value"] for t in champion["tags"]}["test_accuracy"]) == evaluation["test_accuracy"]
    promoted = xcom(first, "promote")
    assert promoted["moved"] and (promoted["version"], promoted["previous_version"]) == ("1", None)
    # MLflow's own client loads the champion: the model fine-tuned into the best checkpoint.
    from mlflow import transformers as mlflow_transformers

    from airflow_ray_train_runtime.transformers import load_for_sequence_classification

    served = mlflow_transformers.load_model(f"models:/{MODEL}@champion", return_type="components")["model"]
    trained, _ = load_for_sequence_classification(result["best_checkpoint_path"])
    assert same_weights(served.state_dict(), trained.state_dict())

    # A deliberately worse model (one epoch at a tiny learning rate) is evaluated and kept out.
    second = dag.test(run_conf=_conf(tiny_bert, num_train_epochs=1, learning_rate=1e-7))
    second_states = states(second)
    assert str(second.state) == "success", second_states
    assert second_states["promote"] == "success"
    worse = xcom(second, "evaluate")
    assert worse["test_accuracy"] < evaluation["test_accuracy"]
    with capfd.disabled():
        print(
            f"\n[transformers pipeline] held-out accuracy: promoted {evaluation['test_accuracy']:.3f}, "
            f"kept out {worse['test_accuracy']:.3f} (chance 0.50)"
        )
    assert xcom(second, "train")["model_version"] == "2"
    assert mlflow.version_by_alias(MODEL, "champion")["version"] == "1"
    kept = xcom(second, "promote")
    assert not kept["moved"] and (kept["version"], kept["previous_version"]) == ("2", "1")
