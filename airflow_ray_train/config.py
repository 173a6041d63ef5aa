"""The ``[ray_train]`` settings: each declared once, with its type, default and description. Every setting is
read here (``ray_train_setting``), and the provider info Airflow shows (``airflow config list``) is built from the
same table, so a default cannot differ between the code and the docs.

No Airflow import at module level: ``get_provider_info`` reads the table, and this package is shipped to clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SECTION = "ray_train"


@dataclass(frozen=True)
class Setting:
    type: type
    default: Any
    description: str
    example: str


SETTINGS: dict[str, Setting] = {
    "default_storage_path": Setting(
        str,
        "",
        "Ray Train storage_path for tasks whose run_config sets none: an absolute path every Ray node and Airflow "
        "worker sees, or a URI (s3://...). Empty: Ray's default.",
        "/shared/ray_results",
    ),
    "deployment_id": Setting(
        str,
        "",
        "Tells this Airflow deployment's Ray jobs and Train runs from those of other deployments that share a Ray "
        "cluster and storage (staging and prod, a laptop and CI), which run the same DAGs with the same run ids. "
        "Empty: a random id made on first use and kept in the metadata DB as the Variable ray_train_deployment_id.",
        "prod-eu-1",
    ),
    "mlflow_conn_id": Setting(
        str,
        "",
        "The 'mlflow' connection every task tracks its training to in MLflow, unless it names its own "
        "(mlflow_conn_id; an empty string turns tracking off for the task). Empty: tasks are tracked only where "
        "they name a connection, or mlflow_tracking_uri is set.",
        "mlflow_default",
    ),
    "mlflow_tracking_uri": Setting(
        str,
        "",
        "An MLflow tracking server to track every task to, without a connection (no credentials), when "
        "mlflow_conn_id is empty. Airflow and the Ray cluster must both reach it.",
        "http://mlflow:5000",
    ),
    "max_log_streams": Setting(
        int,
        50,
        "Log streams one triggerer holds open to one Ray cluster at most. Ray's dashboard serves at most 100 at "
        "once before its other Jobs API calls (status, submit, stop) wait, on any client. A deferred task beyond "
        "this many is followed by its status every poll_interval, and gets a stream when one frees; its log "
        "reaches the task log then, or all at the end.",
        "50",
    ),
    "poll_interval": Setting(
        float,
        5.0,
        "Seconds between job status polls where the job's log cannot be streamed. With the log streaming over a "
        "websocket the end is noticed from it (the result manifest, then polls every 0.2 s; or Ray closing the "
        "stream), and the status poll is a backstop at least 30 s apart.",
        "5.0",
    ),
    "contact_window": Setting(
        float,
        600.0,
        "Seconds a Ray cluster that does not answer (a dashboard restart, a network outage) is waited for while a "
        "task watches its job. The job is not stopped meanwhile; the task log says how long it has waited. Only "
        "after this window does the try end (a retry attaches to the job).",
        "600",
    ),
    "ship_runtime": Setting(
        str,
        "auto",
        "Whether each job carries the provider's Ray-side runtime (airflow-ray-train-runtime) in its runtime_env. "
        "auto: ship it unless the cluster's Python has the same version installed (asked once an hour per cluster "
        "with a small probe job); always: ship it; never: use the runtime installed on the cluster (no upload), "
        "and fail before submitting when it is missing or of another major.minor.",
        "never",
    ),
    "stop_grace_period": Setting(
        float,
        60.0,
        "Seconds a stopped job's training may take to save a checkpoint at its next step and end (a killed, timed "
        "out or marked task; see the README's graceful stop): the declarative Lightning and Transformers loops do "
        "it, a loop of your own calls stop_requested(). Ray's job supervisor keeps the period, so it holds even "
        "when the Airflow process that stopped the job is gone. A loop that does not take part is stopped at once. "
        "0: every job is stopped at once (Ray's SIGTERM, SIGKILL 3 s later). A task's stop_grace_period argument "
        "overrides it.",
        "120",
    ),
}


def ray_train_setting(name: str) -> Any:
    """The ``[ray_train] name`` setting, as its type, or its declared default."""
    from airflow_ray_train.compat import conf

    setting = SETTINGS[name]
    raw = conf.get(SECTION, name, fallback=None)
    if raw is None or (str(raw).strip() == "" and setting.type is not str):
        return setting.default
    value = str(raw).strip()
    return setting.type(value) if setting.type is not str else value


def provider_config() -> dict[str, Any]:
    """The ``config`` part of the provider info, from ``SETTINGS``."""
    options = {
        name: {
            "description": setting.description,
            "version_added": "0.1.0",
            "type": {str: "string", int: "integer", float: "float"}[setting.type],
            "example": setting.example,
            "default": str(setting.default),
        }
        for name, setting in SETTINGS.items()
    }
    return {SECTION: {"description": "airflow-ray-train: Ray Train jobs as Airflow tasks.", "options": options}}
