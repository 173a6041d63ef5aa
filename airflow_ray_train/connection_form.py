"""The ``ray_train`` and ``mlflow`` connections' forms, declared once: the hooks' ``get_ui_field_behaviour``
(Airflow before 3.2) and the provider info's ``ui-field-behaviour`` and ``conn-fields`` (3.2 and later) read
them from here."""

from __future__ import annotations

from typing import Any

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "login", "port"],
    "relabeling": {"host": "Ray dashboard address", "password": "Ray auth token"},
    "placeholders": {
        "host": "http://ray-head:8265 (or 'local' for an embedded local cluster)",
        "password": "output of `ray get-auth-token` on the head (empty if auth is off)",
        "extra": '{"verify": true, "headers": {}, "runtime_env": {}, "python": "python"}',
    },
}

#: Extra fields, saved under their plain names in the connection's extra.
CONN_FIELDS: dict[str, Any] = {
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
}


MLFLOW_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "port"],
    "relabeling": {"host": "Tracking server address", "login": "Username", "password": "Password"},
    "placeholders": {
        "host": "http://mlflow:5000",
        "login": "basic auth user (empty if the server has no auth)",
        "password": "basic auth password",
        "extra": '{"experiment": "my-team", "verify": true}',
    },
}

MLFLOW_CONN_FIELDS: dict[str, Any] = {
    "token": {
        "label": "Bearer token",
        "description": "Sent as Authorization: Bearer, instead of the username and password.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "experiment": {
        "label": "Default experiment",
        "description": "The experiment of tasks that set no mlflow_experiment (default: the DAG id).",
        "schema": {"type": ["string", "null"]},
    },
    "verify": {
        "label": "Verify TLS certificates",
        "description": "Check the server's TLS certificate (https addresses); or a CA bundle path.",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
    "ui_url": {
        "label": "UI address",
        "description": "Where people open the MLflow UI, when it is not the address above (links use it).",
        "schema": {"type": ["string", "null"]},
    },
}


def _connection_type(
    hook: str, conn_type: str, name: str, behaviour: dict[str, Any], fields: dict[str, Any]
) -> dict[str, Any]:
    return {
        "hook-class-name": hook,
        "connection-type": conn_type,
        "hook-name": name,
        "ui-field-behaviour": {key.replace("_", "-"): value for key, value in behaviour.items()},
        "conn-fields": fields,
    }


def provider_connection_types() -> list[dict[str, Any]]:
    """The ``connection-types`` entries of the provider info."""
    return [
        _connection_type(
            "airflow_ray_train.hooks.ray_train.RayTrainHook", "ray_train", "Ray Train", UI_FIELD_BEHAVIOUR, CONN_FIELDS
        ),
        _connection_type(
            "airflow_ray_train.hooks.mlflow.MlflowHook",
            "mlflow",
            "MLflow",
            MLFLOW_UI_FIELD_BEHAVIOUR,
            MLFLOW_CONN_FIELDS,
        ),
    ]
