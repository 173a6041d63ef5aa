"""What older Airflow 3 releases lack, in one place. Each name here is the provider's way to a feature that
moved or arrived in a later release, with the fallback for the releases before it (docs/versions.md):

- ``airflow.sdk`` re-exports ``BaseHook`` since 3.1, ``conf`` and the exceptions since 3.2; before, they live
  in ``airflow.hooks.base``, ``airflow.configuration`` and ``airflow.exceptions``.
- ``BaseHook.aget_connection`` arrived in 3.1, ``Connection.aextra_dejson`` and ``airflow.sdk.log.amask_secret``
  in 3.3. The sync calls they replace talk to the triggerer's supervisor through ``async_to_sync``, which
  fails inside the triggerer's event loop: the fallbacks run them in a thread.
- The triggerer calls ``BaseTrigger.on_kill`` when a user acts on a deferred task since 3.3; before, it only
  cancels the trigger, as it does when a triggerer stops. ``task_still_deferred`` lets a cancelled trigger tell the
  two apart (``RayTrainJobTrigger`` uses it).
"""

from __future__ import annotations

from typing import Any

import airflow
from asgiref.sync import sync_to_async
from packaging.version import Version

try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,attr-defined]

try:
    from airflow.sdk import conf
except ImportError:  # Airflow < 3.2
    from airflow.configuration import conf  # type: ignore[assignment]

try:
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowSkipException,
        AirflowTaskTimeout,
        TaskDeferred,
    )
except ImportError:  # Airflow < 3.2
    from airflow.exceptions import (  # type: ignore[attr-defined,no-redef]
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowSkipException,
        AirflowTaskTimeout,
        TaskDeferred,
    )

try:
    from airflow.sdk.log import mask_secret
except ImportError:  # Airflow 3.0
    from airflow.sdk.execution_time.secrets_masker import mask_secret  # type: ignore[no-redef]

AIRFLOW_VERSION = Version(Version(airflow.__version__).base_version)
#: The triggerer calls ``BaseTrigger.on_kill`` when a user kills, clears or marks a deferred task.
TRIGGER_ON_KILL = AIRFLOW_VERSION >= Version("3.3")


async def aget_connection(hook: Any, conn_id: str) -> Any:
    """``hook.aget_connection(conn_id)``, or the sync lookup in a thread (Airflow 3.0)."""
    if hasattr(hook, "aget_connection"):
        return await hook.aget_connection(conn_id)
    return await sync_to_async(hook.get_connection)(conn_id)


async def aextra_dejson(conn: Any) -> dict[str, Any]:
    """The connection's extra as a dict, read without blocking the event loop (Airflow < 3.3: in a thread,
    because reading it masks its secrets through the supervisor)."""
    if hasattr(conn, "aextra_dejson"):
        return dict(await conn.aextra_dejson() or {})
    return dict(await sync_to_async(lambda: conn.extra_dejson)() or {})


async def amask_secret(value: Any) -> None:
    """Mask ``value`` in the logs from async code (Airflow < 3.3: the sync call, in a thread)."""
    try:
        from airflow.sdk.log import amask_secret as mask
    except ImportError:
        await sync_to_async(mask_secret)(value)
    else:
        await mask(value)


async def task_still_deferred(task_instance: Any) -> bool | None:
    """Whether the task instance a trigger runs for (the triggerer sets ``trigger.task_instance``) is still
    deferred, asked of the Airflow API: False once a user cleared it or marked it (or its DAG run is gone),
    None where that cannot be known."""
    if task_instance is None:
        return None
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    map_index = getattr(task_instance, "map_index", -1)
    map_index = -1 if map_index is None else int(map_index)
    states = await sync_to_async(RuntimeTaskInstance.get_task_states)(
        dag_id=task_instance.dag_id,
        task_ids=[task_instance.task_id],
        run_ids=[task_instance.run_id],
        map_index=map_index,
    )
    key = task_instance.task_id if map_index < 0 else f"{task_instance.task_id}_{map_index}"
    state = (states.get(task_instance.run_id) or {}).get(key)
    return str(getattr(state, "value", state)) == "deferred"


__all__ = [
    "AIRFLOW_VERSION",
    "TRIGGER_ON_KILL",
    "AirflowException",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowSkipException",
    "AirflowTaskTimeout",
    "BaseHook",
    "TaskDeferred",
    "aextra_dejson",
    "aget_connection",
    "amask_secret",
    "conf",
    "mask_secret",
    "task_still_deferred",
]
