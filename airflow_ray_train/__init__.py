"""airflow-ray-train: run Ray Train jobs as Airflow 3 tasks.

This module stays free of Airflow and Ray imports: it is shipped to the cluster with the runtime.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    # Imported here: this module is shipped to the cluster, the form is not.
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
                    "mlflow_conn_id": {
                        "description": "The 'mlflow' connection every task tracks its training to in MLflow, "
                        "unless it names its own (mlflow_conn_id; an empty string turns tracking off for the task). "
                        "Empty: tasks are tracked only where they name a connection, or mlflow_tracking_uri is set.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "mlflow_default",
                        "default": "",
                    },
                    "mlflow_tracking_uri": {
                        "description": "An MLflow tracking server to track every task to, without a connection "
                        "(no credentials), when mlflow_conn_id is empty. Airflow and the Ray cluster must both "
                        "reach it.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "http://mlflow:5000",
                        "default": "",
                    },
                    "max_log_streams": {
                        "description": "Log streams one triggerer holds open to one Ray cluster at most. Ray's "
                        "dashboard serves at most 100 at once before its other Jobs API calls (status, submit, "
                        "stop) wait, on any client. A deferred task beyond this many is followed by its status "
                        "every poll_interval, and gets a stream when one frees; its log reaches the task log then, "
                        "or all at the end.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "50",
                        "default": "50",
                    },
                    "poll_interval": {
                        "description": "Seconds between job status polls where the job's log cannot be "
                        "streamed. With the log streaming over a websocket the end is noticed from it (the result "
                        "manifest, then polls every 0.2 s; or Ray closing the stream), and the status poll is a "
                        "backstop at least 30 s apart.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "5.0",
                        "default": "5.0",
                    },
                },
            }
        },
    }
