"""Airflow's CLI accepts the provider: `airflow providers ...` lists it with its hooks, connection types, form
fields, links and trigger, and `airflow config` knows its options. Each call is a fresh `airflow` process, as a
user's would be."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from airflow_ray_train import __version__
from airflow_ray_train.compat import AIRFLOW_VERSION

pytestmark = [pytest.mark.integration]

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def _airflow(*args: str) -> str:
    result = subprocess.run([AIRFLOW, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


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


def test_connection_form_links_and_config_are_registered():
    widgets = json.loads(_airflow("providers", "widgets", "-o", "json"))
    ours = {w["connection_parameter_name"]: w for w in widgets if w["package_name"] == "airflow-ray-train"}
    mlflow_fields = {f"extra__mlflow__{f}" for f in ("token", "experiment", "verify", "ui_url")}
    if AIRFLOW_VERSION >= Version("3.2"):
        fields = ("verify", "ca_bundle", "headers", "runtime_env", "python")
        assert set(ours) == {f"extra__ray_train__{f}" for f in fields} | mlflow_fields
        assert ours["extra__ray_train__verify"]["field_type"] == ["boolean", "null"]
        assert "ray_train" in _airflow("providers", "behaviours")
    else:  # conn-fields arrived in 3.2: before, the form edits the extras as JSON (docs/versions.md)
        assert ours == {}
    links = _airflow("providers", "links")
    assert "airflow_ray_train.links.ray_train.RayJobLink" in links
    assert "airflow_ray_train.links.mlflow.MlflowRunLink" in links
    assert _airflow("config", "get-value", "ray_train", "poll_interval").strip() == "5.0"
    assert _airflow("config", "get-value", "ray_train", "mlflow_conn_id").strip() == ""


def test_the_trigger_is_registered():
    assert "airflow_ray_train.triggers.ray_train" in _airflow("providers", "triggers")
