"""``register_model`` for the loops users write themselves, on the real local Ray head (2 workers) and the
session's real MLflow server: a plain PyTorch loop (sync and deferred), Lightning with Ray's
``RayTrainReportCallback``, a HuggingFace ``Trainer`` with Ray's callback. Each registered version is
downloaded with MLflow's own client (``models:/<name>/<version>`` and ``models:/<name>@<alias>``), loaded
the way its framework loads it, and checked to be the model that was trained: the best checkpoint's weights,
and its held-out score. Then the tracking server goes down before the last report: the task fails, and its
retry registers exactly one version without training again, sends the report the run missed and ends the
run FINISHED."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from ray_train_helpers import FakeTaskInstance, get_dag, mlflow_history, same_weights, xcom
from ray_train_user_loops import GO_FILE, REACHED_FILE

from airflow_ray_train.exceptions import RayTrainJobError
from airflow_ray_train.hooks.mlflow import MlflowHook
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train_runtime.tracking import CHECKPOINT_MODEL_TYPE, CHECKPOINT_TAG

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REVIEWS = Path(__file__).resolve().parents[1] / "data" / "reviews.csv"
TORCH_LOOP = "ray_train_examples.pytorch_classifier:train_func"
BEST_BY_VAL_ACCURACY = {
    "checkpoint_config": {
        "num_to_keep": 2,
        "checkpoint_score_attribute": "val_accuracy",
        "checkpoint_score_order": "max",
    }
}


def _train(task_id: str, train_func: str, config: dict[str, Any], model: str, **kwargs: Any) -> dict[str, Any]:
    operator = RayTrainOperator(
        task_id=task_id,
        train_func=train_func,
        train_loop_config=config,
        scaling_config={"num_workers": 2},
        register_model=model,
        **kwargs,
    )
    return operator.execute(FakeTaskInstance(task_id).context())  # type: ignore[arg-type]


def _download(uri: str, tmp_path: Path) -> Path:
    import mlflow

    target = tmp_path / uri.replace(":", "_").replace("/", "_").replace("@", "_")
    target.mkdir()
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(target)))


def _check_version(client: Any, model: str, result: dict[str, Any]) -> Any:
    """The version is the best checkpoint's, made from a LoggedModel of the task's run, and linked to it."""
    version = client.get_model_version(model, result["model_version"])
    assert version.run_id == result["mlflow_run_id"]
    assert version.tags[CHECKPOINT_TAG] == result["best_checkpoint_path"]
    assert version.source.startswith("models:/")
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == result["mlflow_run_id"] and logged.model_type == CHECKPOINT_MODEL_TYPE
    return version


def test_a_plain_pytorch_loop_registers_its_best_checkpoint_which_mlflow_loads_as_the_champion(
    ray_conn, mlflow_conn, mlflow_client, direct_deployment, tmp_path
):
    import torch
    from ray_train_examples.pytorch_classifier import MODEL_FILE, evaluate_checkpoint

    model = "torch-quickstart"
    result = _train(
        "register_torch",
        TORCH_LOOP,
        {"epochs": 3, "train_size": 1000},
        model,
        run_config=BEST_BY_VAL_ACCURACY,
    )
    assert result["status"] == "SUCCEEDED" and result["model_version"] == "1", result["error"]
    _check_version(mlflow_client, model, result)
    MlflowHook().set_alias(model, "champion", result["model_version"])

    champion = _download(f"models:/{model}@champion", tmp_path)
    assert sorted(os.listdir(champion)) == sorted(os.listdir(result["best_checkpoint_path"]))
    weights = torch.load(champion / MODEL_FILE, map_location="cpu")
    trained = torch.load(Path(result["best_checkpoint_path"]) / MODEL_FILE, map_location="cpu")
    assert same_weights(weights, trained)
    score = evaluate_checkpoint(str(champion))["test_accuracy"]
    assert score == evaluate_checkpoint(result["best_checkpoint_path"])["test_accuracy"]
    assert score >= 0.7  # chance is 0.25
    by_number = _download(f"models:/{model}/1", tmp_path)
    assert same_weights(torch.load(by_number / MODEL_FILE, map_location="cpu"), trained)


def test_a_deferred_plain_pytorch_loop_registers_too(ray_conn, airflow_db, mlflow_conn, mlflow_client, tmp_path):
    import torch
    from ray_train_examples.pytorch_classifier import MODEL_FILE

    dag_run = get_dag("test_ray_train_register_deferred", module="ray_train_test_dags").test()
    assert str(dag_run.state) == "success"
    result = xcom(dag_run, "train_and_register")
    assert result["model_version"] is not None, result
    version = _check_version(mlflow_client, "torch-deferred", result)
    files = _download(f"models:/torch-deferred/{version.version}", tmp_path)
    trained = torch.load(Path(result["best_checkpoint_path"]) / MODEL_FILE, map_location="cpu")
    assert same_weights(torch.load(files / MODEL_FILE, map_location="cpu"), trained)


def test_a_user_written_lightning_loop_registers_its_ckpt(
    ray_conn, mlflow_conn, mlflow_client, direct_deployment, tmp_path
):
    import torch
    from ray_train_examples.lightning_digits import DigitsClassifier, evaluate_checkpoint, prepare_digits

    from airflow_ray_train_runtime.lightning import load_module

    data_path = prepare_digits(str(tmp_path / "data"))
    result = _train(
        "register_lightning",
        "ray_train_user_loops:lightning_loop",
        {"epochs": 4, "data_path": data_path},
        "digits-user-lightning",
        ship_modules=["ray_train_examples.lightning_digits"],
    )
    assert result["status"] == "SUCCEEDED" and result["model_version"] == "1", result["error"]
    _check_version(mlflow_client, "digits-user-lightning", result)
    files = _download("models:/digits-user-lightning/1", tmp_path)
    assert (files / "checkpoint.ckpt").is_file()
    loaded = load_module(DigitsClassifier, str(files))
    trained = load_module(DigitsClassifier, result["best_checkpoint_path"])
    assert same_weights(loaded.state_dict(), trained.state_dict())
    untrained = DigitsClassifier().state_dict()
    assert not all(torch.equal(value, untrained[key]) for key, value in loaded.state_dict().items())
    assert evaluate_checkpoint(str(files), data_path)["test_accuracy"] >= 0.8


def test_a_user_written_transformers_loop_registers_its_save_pretrained_folder(
    ray_conn, mlflow_conn, mlflow_client, direct_deployment, tmp_path
):
    from ray_train_examples.transformers_text import evaluate_checkpoint, make_tiny_bert, prepare_splits
    from transformers import AutoModelForSequenceClassification

    splits = prepare_splits(str(tmp_path / "data"), dataset_name="csv", data_files=str(REVIEWS))
    tiny = make_tiny_bert(str(tmp_path / "tiny_bert"), str(REVIEWS))
    result = _train(
        "register_transformers",
        "ray_train_user_loops:transformers_loop",
        {
            "model": tiny,
            "train_file": splits["train"],
            "validation_file": splits["validation"],
            "output_dir": str(tmp_path / "trainer"),
            "epochs": 4,
        },
        "text-user-transformers",
        ship_modules=["ray_train_examples.transformers_text"],
    )
    assert result["status"] == "SUCCEEDED" and result["model_version"] == "1", result["error"]
    assert result["metrics"]["eval_accuracy"] >= 0.8, result["metrics"]
    _check_version(mlflow_client, "text-user-transformers", result)
    files = _download("models:/text-user-transformers/1", tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(files / "checkpoint")
    trained = AutoModelForSequenceClassification.from_pretrained(Path(result["best_checkpoint_path"]) / "checkpoint")
    assert same_weights(loaded.state_dict(), trained.state_dict())
    score = evaluate_checkpoint(str(files), splits["test"])["test_accuracy"]
    assert score == evaluate_checkpoint(result["best_checkpoint_path"], splits["test"])["test_accuracy"]
    assert score >= 0.8  # chance is 0.5


def test_the_server_down_at_the_end_costs_no_training_and_makes_no_second_version(
    ray_conn, direct_deployment, tmp_path, monkeypatch
):
    from local_mlflow import start_mlflow_server

    def serve(port: int | None = None) -> Any:
        """The test's own server, on ``port`` where it is free (a restart), as the task's connection."""
        server = start_mlflow_server(tmp_path / "mlflow", port=port)
        connection = {"conn_type": "mlflow", "host": server.url, "login": "admin", "password": server.password}
        monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(connection))
        return server

    server = serve()
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__MLFLOW_CONN_ID", "mlflow_default")
    pause = tmp_path / "pause"
    pause.mkdir()
    epochs = 3

    def operator() -> RayTrainOperator:
        """The task as each try's process builds it anew."""
        return RayTrainOperator(
            task_id="register_through_outage",
            train_func="ray_train_user_loops:paused_torch_loop",
            train_loop_config={"epochs": epochs, "train_size": 500, "pause_dir": str(pause)},
            scaling_config={"num_workers": 2},
            register_model="torch-outage",
            ship_modules=["ray_train_examples.pytorch_classifier"],
            retries=1,
        )

    ti = FakeTaskInstance("register_through_outage", max_tries=1)

    def take_the_server_down() -> None:
        deadline = threading.Event()
        while not (pause / REACHED_FILE).exists() and not deadline.wait(0.2):
            pass
        server.stop()
        (pause / GO_FILE).touch()

    stopper = threading.Thread(target=take_the_server_down, daemon=True)
    stopper.start()
    try:
        with pytest.raises(RayTrainJobError, match="registering the model 'torch-outage' in MLflow failed") as failed:
            operator().execute(ti.context())  # type: ignore[arg-type]
    finally:
        stopper.join(timeout=5)
        (pause / GO_FILE).touch()
    first_job = failed.value.job_id
    assert failed.value.manifest["status"] == "FAILED" and failed.value.manifest["checkpoint_path"]
    checkpoints = sorted(p.name for p in Path(failed.value.manifest["run_path"]).glob("checkpoint_*"))

    # The same store and password; the port too unless the old one is still held (TIME_WAIT).
    server = serve(int(server.url.rsplit(":", 1)[1]))
    try:
        retry = ti.next_try()
        result = operator().execute(retry.context())  # type: ignore[arg-type]
        assert result["status"] == "SUCCEEDED" and result["job_id"] != first_job
        assert result["model_version"] == "1" and result["checkpoint_path"] == failed.value.manifest["checkpoint_path"]
        assert result["metrics"]["epoch"] == epochs - 1
        # Not trained again: the retry's job only collected the run, and no checkpoint was added.
        log = RayTrainHook().get_job_logs(result["job_id"])
        assert "not training it again" in log and "RayTrainWorker" not in log
        assert sorted(p.name for p in Path(result["run_path"]).glob("checkpoint_*")) == checkpoints
        hook = MlflowHook()
        versions = hook.call("GET", "model-versions/search", params={"filter": "name='torch-outage'"})
        assert [v["version"] for v in versions["model_versions"]] == ["1"]
        run = hook.get_run(result["mlflow_run_id"])
        assert run["info"]["status"] == "FINISHED"
        # The last report, made while the server was down, reached the run afterwards.
        assert [step for step, _ in mlflow_history(hook, result["mlflow_run_id"], "val_accuracy")] == list(
            range(epochs)
        )
    finally:
        server.stop()
