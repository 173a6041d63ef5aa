"""MLflow tracking without a server: the spec's tracking section, where the credentials travel (a file of their
own in the spec's package, nowhere else), and how reports become MLflow metrics and params."""

from __future__ import annotations

import json

import pytest

from airflow_ray_train.hooks.mlflow import MlflowSettings, mlflow_hook
from airflow_ray_train.packaging import spec_package
from airflow_ray_train_runtime.frameworks import FrameworkNotInstalledError, require
from airflow_ray_train_runtime.spec import SpecError, TrackingSpec, TrainSpec
from airflow_ray_train_runtime.tracking import (
    flat_params,
    metric_values,
    read_credentials,
    report_step,
    run_params,
)

TRACKING = {
    "tracking_uri": "http://mlflow:5000",
    "experiment_id": "3",
    "run_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "run_url": "http://localhost:5000/#/experiments/3/runs/0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "register_model": "digits",
}


def _spec(**overrides):
    return TrainSpec(train_func="m:f", run_name="r", submission_id="s-try1", **overrides)


def test_the_tracking_section_is_optional_round_trips_and_names_a_bad_field():
    assert _spec().tracking is None and TrainSpec.from_json(_spec().to_json()).tracking is None
    spec = _spec(tracking=TRACKING)
    assert spec.tracking == TrackingSpec(**TRACKING)
    assert TrainSpec.from_json(spec.to_json()) == spec
    with pytest.raises(SpecError, match=r"tracking\.run_id is 'not an id'"):
        _spec(tracking={**TRACKING, "run_id": "not an id"})
    with pytest.raises(SpecError, match=r"tracking\.tracking_url is not a tracking field.*did you mean 'tracking_uri'"):
        _spec(tracking={**{k: v for k, v in TRACKING.items() if k != "tracking_uri"}, "tracking_url": "http://x"})


def test_credentials_ship_in_a_file_of_their_own_and_never_in_the_spec(tmp_path, monkeypatch):
    settings = MlflowSettings(tracking_uri="http://mlflow:5000", username="ci", password="s3cret-pw")
    spec = _spec(tracking=TRACKING)
    package = spec_package(spec, settings.credentials_env())
    with package.archive() as archive:
        archive.extractall(tmp_path)
        assert sorted(archive.namelist()) == sorted([spec.shipped_file, spec.credentials_file])
        assert "s3cret-pw" not in archive.read(spec.shipped_file).decode()
    # The driver finds the file where Ray unpacks py_modules (on sys.path) and keeps only the client's variables.
    monkeypatch.syspath_prepend(str(tmp_path))
    assert read_credentials(spec) == {"MLFLOW_TRACKING_USERNAME": "ci", "MLFLOW_TRACKING_PASSWORD": "s3cret-pw"}
    # No credentials, no file; a token goes as the client's token variable.
    bare = spec_package(spec, {})
    with bare.archive() as archive:
        assert archive.namelist() == [spec.shipped_file]
    token = MlflowSettings(tracking_uri="https://m", token="tok", username="u", password="p", verify=False)
    assert token.credentials_env() == {"MLFLOW_TRACKING_TOKEN": "tok", "MLFLOW_TRACKING_INSECURE_TLS": "true"}
    assert "tok" not in repr(token) and "p'" not in repr(token)


def test_which_mlflow_a_task_tracks_to(monkeypatch):
    monkeypatch.delenv("AIRFLOW__RAY_TRAIN__MLFLOW_CONN_ID", raising=False)
    monkeypatch.delenv("AIRFLOW__RAY_TRAIN__MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_hook() is None  # opt-in: nothing configured, untracked
    assert mlflow_hook("team_mlflow").mlflow_conn_id == "team_mlflow"
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__MLFLOW_TRACKING_URI", "http://mlflow:5000")
    hook = mlflow_hook()
    assert hook.mlflow_conn_id is None and hook.settings.tracking_uri == "http://mlflow:5000"
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__MLFLOW_CONN_ID", "mlflow_default")
    assert mlflow_hook().mlflow_conn_id == "mlflow_default"
    assert mlflow_hook("") is None  # a task opts out


def test_report_steps_follow_step_then_epoch_then_the_running_count():
    assert report_step({"step": 170, "epoch": 9}, 3) == 170  # Lightning's and Trainer's global step
    assert report_step({"epoch": 2.0, "loss": 0.1}, 3) == 2
    assert report_step({"epoch": 1.5, "loss": 0.1}, 3) == 3  # a fractional epoch is no step
    assert report_step({"loss": 0.1}, 7) == 7
    assert report_step({"step": True}, 4) == 4


def test_only_finite_numbers_become_metrics_under_keys_mlflow_accepts():
    values = metric_values({"val loss": 0.5, "acc@1": 0.9, "flag": True, "nan": None, "note": "x", "n": 3})
    assert values == {"val loss": 0.5, "acc_1": 0.9, "n": 3.0}


def test_params_flatten_the_configs_and_name_the_framework_and_versions():
    spec = TrainSpec(
        train_func="airflow_ray_train_runtime.lightning:train_loop",
        run_name="r",
        submission_id="s",
        train_loop_config={"module_kwargs": {"lr": 0.002, "hidden": 64}, "datamodule": "m:D", "top_k": None},
        scaling_config={"num_workers": 2, "use_gpu": False},
    )
    params = run_params(spec)
    assert params["framework"] == "lightning"
    assert params["train_loop_config.module_kwargs.lr"] == "0.002"
    assert params["train_loop_config.datamodule"] == "m:D" and params["train_loop_config.top_k"] == "null"
    assert params["scaling_config.num_workers"] == "2" and params["scaling_config.use_gpu"] == "false"
    assert {"ray_version", "torch_version", "lightning_version"} <= set(params)
    assert len(flat_params("c", "x" * 10000)["c"]) == 6000  # MLflow's limit on a param's value
    assert json.loads(flat_params("c", [1, 2])["c"]) == [1, 2]


def test_a_missing_mlflow_fails_with_the_pip_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an import of a missing package does
    with pytest.raises(FrameworkNotInstalledError, match=r'pip install "mlflow-skinny==3.17.2"') as missing:
        require("mlflow", "mlflow", "MLflow tracking")
    assert "airflow-ray-train[mlflow]" in str(missing.value)
