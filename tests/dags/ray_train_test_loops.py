"""Train loops for the fault tests: cheap epochs of a set length, a checkpoint every epoch, and a resume from
the latest checkpoint, so a test can kill something mid-run and see where the run picked up.

Shipped to the cluster as a single-file module (the operator ships the module that holds ``train_func``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

STATE_FILE = "state.json"


def slow_counter(config: dict[str, Any]) -> None:
    """``epochs`` epochs of ``sleep_s`` seconds each; reports ``epoch``, ``start_epoch`` and a running
    ``total`` (the sum of the epoch numbers so far, which only comes out right if resumes carry state).

    ``sleep_alone_s`` (default ``sleep_s``) is an epoch's length while the group has a single worker: an elastic
    test that shrinks the group to one worker keeps the training going long enough to see it grow back."""
    import ray.train

    epochs = int(config.get("epochs", 3))
    sleep_s = float(config.get("sleep_s", 1.0))
    if ray.train.get_context().get_world_size() == 1:
        sleep_s = float(config.get("sleep_alone_s") or sleep_s)
    start_epoch, total = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir, open(os.path.join(ckpt_dir, STATE_FILE)) as handle:
            state = json.load(handle)
        start_epoch, total = int(state["epoch"]) + 1, int(state["total"])
    rank = ray.train.get_context().get_world_rank()
    print(f"slow_counter rank {rank} pid {os.getpid()} starts at epoch {start_epoch}", flush=True)
    for epoch in range(start_epoch, epochs):
        time.sleep(sleep_s)
        total += epoch
        report_with_state({"epoch": epoch, "start_epoch": start_epoch, "total": total}, rank)


def report_with_state(metrics: dict[str, Any], rank: int) -> None:
    """``ray.train.report`` the metrics, with rank 0's checkpoint holding them as ``STATE_FILE``."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        saved = None
        if rank == 0:
            with open(os.path.join(tmp, STATE_FILE), "w") as handle:
                json.dump(metrics, handle)
            saved = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=saved)


def count_files(config: dict[str, Any]) -> None:
    """Reports how many entries ``config["files"]`` has: proof that a large config reached every worker whole;
    and how many folders on the worker's ``sys.path`` hold a shipped spec (the driver's alone: none should)."""
    import ray.train

    files = config["files"]
    spec_folders = sum(
        1
        for entry in sys.path
        if os.path.isdir(entry or ".")
        and any(n.startswith("_airflow_ray_train_spec_") for n in os.listdir(entry or "."))
    )
    ray.train.report({"files": len(files), "last": files[-1], "spec_folders_on_worker_path": spec_folders})


def stoppable_counter(config: dict[str, Any]) -> None:
    """A plain PyTorch-style loop written as in Ray's docs, taking part in a graceful stop with one line:
    ``epochs`` epochs of ``steps`` steps of ``step_s`` seconds, a checkpoint every epoch, and ``stop_requested()``
    checked before each step. Stopped, it reports a checkpoint of the step it reached and returns; resumed, it
    goes on from that step (mid-epoch). Reports ``step`` (global), ``epoch``, ``start_step`` and ``stopped``."""
    import ray.train

    from airflow_ray_train_runtime.stop import stop_requested

    epochs, steps = int(config.get("epochs", 4)), int(config.get("steps", 5))
    step_s = float(config.get("step_s", 0.5))
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir, open(os.path.join(ckpt_dir, STATE_FILE)) as handle:
            step = int(json.load(handle)["step"])
    start_step = step
    rank = ray.train.get_context().get_world_rank()
    print(f"stoppable_counter rank {rank} starts at step {start_step}", flush=True)
    stopped = False
    for epoch in range(step // steps, epochs):
        for _batch in range(step % steps, steps):
            if stop_requested():
                stopped = True
                break
            time.sleep(step_s)
            step += 1
        report_with_state({"step": step, "epoch": epoch, "start_step": start_step, "stopped": stopped}, rank)
        if stopped:
            return
