"""airflow-ray-train: run Ray Train jobs as Airflow 3 tasks.

The Ray-side runtime is the distribution ``airflow-ray-train-runtime`` (package ``airflow_ray_train_runtime``);
this package is the Airflow side only. Importing it imports no Airflow and no Ray (the provider's entry point).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("airflow-ray-train")
except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed: the one version file
    from airflow_ray_train_runtime.spec import RUNTIME_VERSION as __version__


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    # Imported here: this module is shipped to the cluster, the form is not.
    from airflow_ray_train.config import provider_config
    from airflow_ray_train.connection_form import provider_connection_types

    return {
        "package-name": "airflow-ray-train",
        "name": "Ray Train",
        "description": "Run Ray Train TorchTrainer jobs (PyTorch, Lightning, Transformers) as Airflow tasks.",
        "versions": [__version__],
        "hooks": [
            {"integration-name": "Ray Train", "python-modules": ["airflow_ray_train.hooks.ray_train"]},
            {"integration-name": "MLflow", "python-modules": ["airflow_ray_train.hooks.mlflow"]},
        ],
        "operators": [
            {"integration-name": "Ray Train", "python-modules": ["airflow_ray_train.operators.ray_train"]},
            {"integration-name": "MLflow", "python-modules": ["airflow_ray_train.operators.mlflow"]},
        ],
        "triggers": [{"integration-name": "Ray Train", "python-modules": ["airflow_ray_train.triggers.ray_train"]}],
        "integrations": [
            {"integration-name": "Ray Train", "external-doc-url": "https://docs.ray.io/en/latest/train/train.html"},
            {"integration-name": "MLflow", "external-doc-url": "https://mlflow.org/docs/latest/ml/tracking/"},
        ],
        "connection-types": provider_connection_types(),
        "extra-links": ["airflow_ray_train.links.ray_train.RayJobLink", "airflow_ray_train.links.mlflow.MlflowRunLink"],
        "task-decorators": [
            {"name": "ray_train", "class-name": "airflow_ray_train.decorators.ray_train.ray_train_task"}
        ],
        "config": provider_config(),
    }
