"""The ``ray_train`` connection's form, declared once: the hook's ``get_ui_field_behaviour`` (Airflow before
3.2) and the provider info's ``ui-field-behaviour`` and ``conn-fields`` (3.2 and later) read it from here."""

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


def provider_connection_type() -> dict[str, Any]:
    """The ``connection-types`` entry of the provider info."""
    return {
        "hook-class-name": "airflow_ray_train.hooks.ray_train.RayTrainHook",
        "connection-type": "ray_train",
        "hook-name": "Ray Train",
        "ui-field-behaviour": {key.replace("_", "-"): value for key, value in UI_FIELD_BEHAVIOUR.items()},
        "conn-fields": CONN_FIELDS,
    }
