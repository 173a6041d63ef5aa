"""airflow-ray-train: run Ray Train jobs as Airflow 3 tasks.

This module stays free of Airflow and Ray imports: it is shipped to the cluster with the runtime.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-ray-train",
        "name": "Ray Train",
        "description": "Run Ray Train TorchTrainer jobs (PyTorch, Lightning, Transformers) as Airflow tasks.",
        "versions": [__version__],
        "hooks": [{"integration-name": "Ray Train", "python-modules": ["airflow_ray_train.hooks.ray_train"]}],
        "operators": [{"integration-name": "Ray Train", "python-modules": ["airflow_ray_train.operators.ray_train"]}],
        "integrations": [
            {"integration-name": "Ray Train", "external-doc-url": "https://docs.ray.io/en/latest/train/train.html"}
        ],
        "connection-types": [
            {"hook-class-name": "airflow_ray_train.hooks.ray_train.RayTrainHook", "connection-type": "ray_train"}
        ],
    }
