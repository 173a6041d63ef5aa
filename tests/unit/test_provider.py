"""Airflow accepts the provider: its provider info, and the connection forms and the decorator that Airflow's
ProvidersManager finds through the entry point (the CLI's view of the same is in
tests/integration/test_provider_cli.py)."""

from __future__ import annotations

from packaging.version import Version

from airflow_ray_train import __version__, get_provider_info
from airflow_ray_train.compat import AIRFLOW_VERSION


def test_provider_info_names_the_distribution():
    info = get_provider_info()
    assert info["package-name"] == "airflow-ray-train"
    assert info["versions"][0] == __version__
    operators = {entry["integration-name"]: entry["python-modules"] for entry in info["operators"]}
    assert operators == {
        "Ray Train": ["airflow_ray_train.operators.ray_train"],
        "MLflow": ["airflow_ray_train.operators.mlflow"],
    }


def test_the_connection_forms_and_the_decorator_are_registered():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    # Before 3.2 Airflow reads a hook's form (get_ui_field_behaviour) only with flask-appbuilder installed.
    if AIRFLOW_VERSION >= Version("3.2"):
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
