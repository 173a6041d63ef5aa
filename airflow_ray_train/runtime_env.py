"""A job's ``runtime_env``: checked before anything is submitted, and composed from the connection's default,
the task's own and the code the operator ships."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train_runtime.spec import SpecError, check_json_value
from airflow_ray_train_runtime.stop import STOP_WAIT_ENV, stop_wait_s

#: The top-level ``runtime_env`` fields Ray 2.60 knows (``ray.runtime_env.RuntimeEnv.known_fields``).
RUNTIME_ENV_FIELDS = (
    "py_modules",
    "py_executable",
    "java_jars",
    "working_dir",
    "conda",
    "pip",
    "uv",
    "container",
    "excludes",
    "env_vars",
    "config",
    "worker_process_setup_hook",
    "image_uri",
)
#: Fields whose entries add up across the connection's default and the task's (the task wins a clash).
MERGED_FIELDS = ("env_vars",)
#: URI schemes of ``py_modules`` Ray fetches itself; anything else is a local path the REST API cannot take.
REMOTE_MODULE_SCHEMES = ("gcs://", "s3://", "gs://", "https://")


def check_runtime_env(runtime_env: Any) -> None:
    """Catch what Ray would accept and then fail on (or silently ignore) before anything is submitted."""
    if runtime_env is None:
        return
    if not isinstance(runtime_env, dict):
        raise RayTrainConfigError(
            f"runtime_env is a {type(runtime_env).__name__}. Fix: pass a dict such as "
            "{'pip': ['scikit-learn'], 'env_vars': {'KEY': 'value'}}.",
            field="runtime_env",
        )
    for key in runtime_env:
        # Unknown keys go to runtime_env plugins, so only a near miss of a known field is an error.
        close = difflib.get_close_matches(str(key), RUNTIME_ENV_FIELDS, n=1, cutoff=0.75)
        if key not in RUNTIME_ENV_FIELDS and close:
            raise RayTrainConfigError(
                f"runtime_env.{key} is not a Ray runtime_env field (Ray would ignore it). "
                f"Fix: did you mean {close[0]!r}? Fields: {sorted(RUNTIME_ENV_FIELDS)}.",
                field=f"runtime_env.{key}",
            )
    _check_env_vars(runtime_env.get("env_vars"))
    try:
        check_json_value("runtime_env", "runtime_env", runtime_env)
    except SpecError as exc:
        raise RayTrainConfigError(str(exc), field=exc.field) from exc


def _check_env_vars(env_vars: Any) -> None:
    if env_vars is None:
        return
    if not isinstance(env_vars, dict):
        raise RayTrainConfigError(
            f"runtime_env.env_vars is a {type(env_vars).__name__}. Fix: pass a dict of strings.",
            field="runtime_env.env_vars",
        )
    for name, value in env_vars.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise RayTrainConfigError(
                f"runtime_env.env_vars[{name!r}] is {value!r} ({type(value).__name__}); Ray takes strings "
                f"only. Fix: quote it, e.g. {{{str(name)!r}: {str(value)!r}}}.",
                field=f"runtime_env.env_vars[{name!r}]",
            )


def merge_runtime_env(default: dict[str, Any], task: dict[str, Any] | None) -> dict[str, Any]:
    """The task's ``runtime_env`` over the connection's default: a task's ``env_vars`` add to the default's."""
    merged = {**default, **(task or {})}
    for key in MERGED_FIELDS:
        if isinstance(default.get(key), dict) and isinstance((task or {}).get(key), dict):
            merged[key] = {**default[key], **(task or {})[key]}
    return merged


def with_py_modules(runtime_env: dict[str, Any], shipped_uris: Sequence[str]) -> dict[str, Any]:
    """``runtime_env`` with ``py_modules`` holding the shipped packages' URIs, then the user's remote ones."""
    given = [str(m) for m in runtime_env.get("py_modules", [])]
    local = [m for m in given if not m.startswith(REMOTE_MODULE_SCHEMES)]
    if local:
        raise RayTrainConfigError(
            f"runtime_env.py_modules holds local paths {local}; the Jobs REST API takes only URIs. "
            "Fix: leave your code to the operator (it ships the package that holds train_func) or give "
            "remote URIs (gcs://, s3://, https://...zip).",
            field="runtime_env.py_modules",
        )
    return {**runtime_env, "py_modules": [*shipped_uris, *given]}


def with_stop_wait(runtime_env: dict[str, Any], grace_period_s: float) -> dict[str, Any]:
    """``runtime_env`` with the job supervisor's wait between SIGTERM and SIGKILL set for a graceful stop of
    ``grace_period_s`` (see ``runtime.stop``): Ray runs the supervisor in the job's runtime_env. A wait the user
    set that is longer is kept; no grace period leaves Ray's default."""
    if grace_period_s <= 0:
        return runtime_env
    env_vars = dict(runtime_env.get("env_vars") or {})
    wait = stop_wait_s(grace_period_s)
    try:
        wait = max(wait, int(env_vars.get(STOP_WAIT_ENV, 0)))
    except ValueError:
        pass
    env_vars[STOP_WAIT_ENV] = str(wait)
    return {**runtime_env, "env_vars": env_vars}
