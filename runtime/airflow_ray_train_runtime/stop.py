"""A stop that keeps the work: when Airflow stops a job (a killed, timed-out or marked task), a training loop
that takes part saves a checkpoint at its next step and ends, instead of losing what it trained since its last
one.

How a stop travels, with ``stop_grace_period`` > 0 (the operator argument, or ``[ray_train]
stop_grace_period``):

1. The hook submits the job with ``RAY_JOB_STOP_WAIT_TIME_S`` in its ``runtime_env`` env vars: Ray's job
   supervisor runs in the job's runtime_env and reads it as the seconds between its SIGTERM and its SIGKILL
   (3 s by default). So the grace period is kept by the cluster, even when the Airflow process that asked for
   the stop is gone a moment later.
2. The driver's SIGTERM handler asks the run's report recorder (an actor beside the driver, named after the Ray
   job) to raise the stop flag, and waits for ``fit()`` to end, up to the grace period.
3. Every Train worker's loop calls :func:`stop_requested` between steps (the declarative Lightning and
   Transformers loops do it for you). Rank 0 reads the flag at most once a second; all ranks agree on it with one
   ``all_reduce``, so they end at the same step. The loop saves a checkpoint, reports it and returns.
4. The driver's manifest says ``STOPPED`` and names that checkpoint; a retry or a cleared task resumes from it.

A loop that never calls :func:`stop_requested` is stopped at once, as without a grace period: the driver knows
from the recorder whether the loop takes part.

A plain PyTorch loop takes part with one line, e.g.::

    for batch in loader:
        if stop_requested():
            break  # then save and report a checkpoint, as at the end of an epoch, and return
        ...

Runs on the cluster; imports Ray and torch only when called.
"""

from __future__ import annotations

import time
from typing import Any

#: How long a job waits for the driver after the grace period: it prints its manifest and reads the report
#: history before Ray's SIGKILL.
WRAP_UP_S = 15
#: The job supervisor's wait between SIGTERM and SIGKILL, read from its environment (the job's runtime_env).
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"
#: Rank 0 asks the recorder at most this often.
CHECK_EVERY_S = 1.0
_RECORDER_PREFIX = "airflow_ray_train_recorder_"


def recorder_name(job_id: str) -> str:
    """The report recorder's actor name in the Ray job ``job_id`` (the hex id Ray gives the driver)."""
    return f"{_RECORDER_PREFIX}{job_id}"


def stop_wait_s(grace_period_s: float) -> int:
    """``RAY_JOB_STOP_WAIT_TIME_S`` for a grace period (Ray reads it as an int)."""
    return int(-(-grace_period_s // 1)) + WRAP_UP_S


class _State:
    """This worker process's view of the stop flag."""

    def __init__(self) -> None:
        self.agreed = False
        self.recorder: Any = None
        self.no_recorder_until = 0.0
        self.checked_at = 0.0
        self.registered = False

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


_STATE = _State()


def _recorder() -> Any:
    import ray

    if _STATE.recorder is None and time.monotonic() >= _STATE.no_recorder_until:
        try:
            _STATE.recorder = ray.get_actor(recorder_name(ray.get_runtime_context().get_job_id()))
        except ValueError:  # not run by the provider's driver (or not yet): no stop can be asked
            _STATE.no_recorder_until = time.monotonic() + 30.0
    return _STATE.recorder


def _asked(clock: float) -> bool:
    """Rank 0: whether the driver raised the stop flag (read at most every ``CHECK_EVERY_S``); the first call
    tells the driver that this loop takes part."""
    import ray

    recorder = _recorder()
    if recorder is None:
        return False
    if not _STATE.registered:
        _STATE.registered = True
        recorder.take_part.remote()
    if clock - _STATE.checked_at < CHECK_EVERY_S:
        return False
    _STATE.checked_at = clock
    try:
        return bool(ray.get(recorder.stop_requested.remote(), timeout=10))
    except Exception:  # noqa: BLE001 - a recorder that does not answer asks for nothing
        return False


def _agree(flag: bool) -> bool:
    """True on every rank when any rank says True (one ``all_reduce`` when a process group is up)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return flag
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def stop_requested() -> bool:
    """Whether Airflow asked this job to stop: save a checkpoint, report it and return. Call it between steps,
    on every worker at the same points (all ranks agree through one collective, so all of them end at the same
    step). Once True it stays True, without another collective. False outside a job run by the provider."""
    if _STATE.agreed:
        return True
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    asked = _asked(time.monotonic()) if rank == 0 else False
    _STATE.agreed = _agree(asked)
    return _STATE.agreed


__all__ = ["STOP_WAIT_ENV", "WRAP_UP_S", "recorder_name", "stop_requested", "stop_wait_s"]
