"""Airflow accepts the provider: `airflow providers ...` lists it with its hook and connection type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from packaging.version import Version

from airflow_ray_train import __version__, get_provider_info
from airflow_ray_train.compat import AIRFLOW_VERSION

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def _airflow(*args: str) -> str:
    result = subprocess.run([AIRFLOW, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_provider_info_names_the_distribution():
    info = get_provider_info()
    assert info["package-name"] == "airflow-ray-train"
    assert info["versions"][0] == __version__
    operators = {entry["integration-name"]: entry["python-modules"] for entry in info["operators"]}
    assert operators == {
        "Ray Train": ["airflow_ray_train.operators.ray_train"],
        "MLflow": ["airflow_ray_train.operators.mlflow"],
    }


def test_airflow_lists_the_provider_and_its_connection_type():
    providers = json.loads(_airflow("providers", "list", "-o", "json"))
    assert any(p["package_name"] == "airflow-ray-train" and p["version"] == __version__ for p in providers)
    hooks = json.loads(_airflow("providers", "hooks", "-o", "json"))
    ray_train = next(h for h in hooks if h["connection_type"] == "ray_train")
    assert ray_train["class"] == "airflow_ray_train.hooks.ray_train.RayTrainHook"
    assert ray_train["package_name"] == "airflow-ray-train"
    assert ray_train["hook_name"] == "Ray Train"
    mlflow = next(h for h in hooks if h["connection_type"] == "mlflow")
    assert mlflow["class"] == "airflow_ray_train.hooks.mlflow.MlflowHook"
    assert mlflow["package_name"] == "airflow-ray-train"


def test_connection_form_link_decorator_and_config_are_registered():
    widgets = json.loads(_airflow("providers", "widgets", "-o", "json"))
    ours = {w["connection_parameter_name"]: w for w in widgets if w["package_name"] == "airflow-ray-train"}
    mlflow_fields = {f"extra__mlflow__{f}" for f in ("token", "experiment", "verify", "ui_url")}
    if AIRFLOW_VERSION >= Version("3.2"):
        fields = ("verify", "ca_bundle", "headers", "runtime_env", "python")
        assert set(ours) == {f"extra__ray_train__{f}" for f in fields} | mlflow_fields
        assert ours["extra__ray_train__verify"]["field_type"] == ["boolean", "null"]
    else:  # conn-fields arrived in 3.2: before, the form edits the extras as JSON (README: supported versions)
        assert ours == {}
    links = _airflow("providers", "links")
    assert "airflow_ray_train.links.ray_train.RayJobLink" in links
    assert "airflow_ray_train.links.mlflow.MlflowRunLink" in links
    assert _airflow("config", "get-value", "ray_train", "poll_interval").strip() == "5.0"
    assert _airflow("config", "get-value", "ray_train", "mlflow_conn_id").strip() == ""

    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    # Before 3.2 Airflow reads a hook's form (get_ui_field_behaviour) only with flask-appbuilder installed.
    if AIRFLOW_VERSION >= Version("3.2"):
        assert "ray_train" in _airflow("providers", "behaviours")
        assert manager.field_behaviours["ray_train"]["relabeling"]["password"] == "Ray auth token"
        assert manager.field_behaviours["mlflow"]["relabeling"]["host"] == "Tracking server address"
        # The bearer token is a password field in the form, masked like the connection's password.
        assert manager.connection_form_widgets["extra__mlflow__token"].is_sensitive
    try:
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime
    except ImportError:  # Airflow < 3.2 keeps the decorators in the core's ProvidersManager
        decorators = manager.taskflow_decorators
    else:
        decorators = ProvidersManagerTaskRuntime().taskflow_decorators
    assert "ray_train" in decorators
    assert decorators["ray_train"].__name__ == "ray_train_task"


def test_the_trigger_is_registered():
    assert "airflow_ray_train.triggers.ray_train" in _airflow("providers", "triggers")
