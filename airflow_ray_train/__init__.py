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
        "triggers": [{"integration-name": "Ray Train", "python-modules": ["airflow_ray_train.triggers.ray_train"]}],
        "integrations": [
            {"integration-name": "Ray Train", "external-doc-url": "https://docs.ray.io/en/latest/train/train.html"}
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_ray_train.hooks.ray_train.RayTrainHook",
                "connection-type": "ray_train",
                "hook-name": "Ray Train",
                # The Airflow 3.2+ declarative form; older 3.x read RayTrainHook.get_ui_field_behaviour().
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"host": "Ray dashboard address", "password": "Ray auth token"},
                    "placeholders": {
                        "host": "http://ray-head:8265 (or 'local' for an embedded local cluster)",
                        "password": "output of `ray get-auth-token` on the head (empty if auth is off)",
                    },
                },
                "conn-fields": {
                    "verify": {
                        "label": "Verify TLS certificates",
                        "description": "Check the dashboard's TLS certificate (https addresses).",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                    "ca_bundle": {
                        "label": "CA bundle path",
                        "description": "A CA bundle to verify the dashboard's certificate with.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "headers": {
                        "label": "Extra HTTP headers (JSON)",
                        "description": 'Sent with every request, e.g. {"X-Proxy-Auth": "..."}.',
                        "schema": {"type": ["string", "null"]},
                    },
                    "runtime_env": {
                        "label": "Default runtime_env (JSON)",
                        "description": 'Merged under every job\'s runtime_env, e.g. {"env_vars": {...}}.',
                        "schema": {"type": ["string", "null"]},
                    },
                    "python": {
                        "label": "Python on the cluster",
                        "description": "The interpreter the job entrypoint runs (default: python).",
                        "schema": {"type": ["string", "null"], "default": "python"},
                    },
                },
            }
        ],
        "extra-links": ["airflow_ray_train.links.ray_train.RayJobLink"],
        "task-decorators": [
            {"name": "ray_train", "class-name": "airflow_ray_train.decorators.ray_train.ray_train_task"}
        ],
        "config": {
            "ray_train": {
                "description": "airflow-ray-train: Ray Train jobs as Airflow tasks.",
                "options": {
                    "default_storage_path": {
                        "description": "Ray Train storage_path for tasks whose run_config sets none: an absolute "
                        "path every Ray node and Airflow worker sees, or a URI (s3://...). Empty: Ray's default.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/shared/ray_results",
                        "default": "",
                    },
                    "deployment_id": {
                        "description": "Tells this Airflow deployment's Ray jobs and Train runs from those of "
                        "other deployments that share a Ray cluster and storage (staging and prod, a laptop and "
                        "CI), which run the same DAGs with the same run ids. Empty: a random id made on first use "
                        "and kept in the metadata DB as the Variable ray_train_deployment_id.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "prod-eu-1",
                        "default": "",
                    },
                    "poll_interval": {
                        "description": "Seconds between job status polls while a job runs: a backstop. The "
                        "log streams over a websocket, and the end is noticed from it (the result manifest, "
                        "then polls every 0.2 s; or Ray closing the stream) within about a second.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "5.0",
                        "default": "5.0",
                    },
                },
            }
        },
    }
