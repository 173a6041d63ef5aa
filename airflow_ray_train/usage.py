"""What a training used, for XCom's ``usage``, the task log and the MLflow run: the driver's figures (the Train
run's time, its worker groups, CPU- and GPU-seconds; see ``runtime.usage``) with, from the Jobs API, each job's
wall time and the driver's share (the resources its entrypoint reserved x that time), for this try and summed
over the jobs that trained the same Train run (a retry resumes it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from airflow_ray_train.hooks.jobs_api import JobInfo

#: The figures logged to the MLflow run (as ``usage_<name>`` and ``usage_series_<name>``).
MLFLOW_FIGURES = ("job_s", "train_run_s", "cpu_s", "gpu_s", "driver_cpu_s", "driver_gpu_s")


def _driver(info: JobInfo | None) -> tuple[float | None, float, float]:
    wall = info.wall_s if info is not None else None
    if wall is None or info is None:
        return wall, 0.0, 0.0
    return wall, round(info.entrypoint_num_cpus * wall, 3), round(info.entrypoint_num_gpus * wall, 3)


def task_usage(
    manifest_usage: Mapping[str, Any], info: JobInfo, earlier: Callable[[str], JobInfo | None]
) -> dict[str, Any]:
    """XCom's ``usage`` for a job that ended: ``manifest_usage`` (the manifest's) with ``job_s`` and the
    driver's ``driver_cpu_s``/``driver_gpu_s`` from ``info``; ``series`` sums them over the Train run's jobs,
    each earlier one's read with ``earlier`` (None where the cluster no longer has it: its wall time is then
    left out, and ``series.jobs_timed`` says how many were counted)."""
    this = dict(manifest_usage.get("try") or {})
    if not this:
        return {}
    job_s, driver_cpu_s, driver_gpu_s = _driver(info)
    this.update(
        job_s=job_s,
        driver={"CPU": info.entrypoint_num_cpus, "GPU": info.entrypoint_num_gpus},
        driver_cpu_s=driver_cpu_s,
        driver_gpu_s=driver_gpu_s,
    )
    series = dict(manifest_usage.get("series") or {})
    if series:
        timed = [(job_s, driver_cpu_s, driver_gpu_s)] if job_s is not None else []
        for job_id in series.get("jobs") or []:
            if job_id != info.submission_id:
                wall, cpu, gpu = _driver(earlier(job_id))
                if wall is not None:
                    timed.append((wall, cpu, gpu))
        series.update(
            job_s=round(sum(t[0] for t in timed), 3),
            driver_cpu_s=round(sum(t[1] for t in timed), 3),
            driver_gpu_s=round(sum(t[2] for t in timed), 3),
            jobs_timed=len(timed),
        )
        this["series"] = series
    return this


def _seconds(value: Any) -> str:
    return "?" if value is None else f"{float(value):.0f}"


def usage_sentence(usage: Mapping[str, Any]) -> str:
    """The usage in one sentence, for the task log's last line."""
    if not usage:
        return "Usage: not reported (the cluster's runtime reports none)."
    groups = usage.get("worker_groups") or []
    sizes = sorted({g["workers"] for g in groups})
    per_worker = groups[-1]["per_worker"] if groups else {}
    shown = {k: v for k, v in per_worker.items() if k in ("CPU", "GPU") or k.startswith("accelerator_type")}
    workers = "/".join(str(n) for n in sizes) or "0"
    accelerator = f" on {usage['accelerator_type']}" if usage.get("accelerator_type") else ""
    text = (
        f"Usage: job {_seconds(usage.get('job_s'))} s, Train run {_seconds(usage.get('train_run_s'))} s with "
        f"{workers} workers x {shown or '{}'}{accelerator}: {float(usage.get('cpu_s') or 0):.0f} CPU-seconds, "
        f"{float(usage.get('gpu_s') or 0):.0f} GPU-seconds; driver {float(usage.get('driver_cpu_s') or 0):.0f} "
        "CPU-seconds."
    )
    series = usage.get("series") or {}
    if len(series.get("jobs") or []) > 1:
        text += (
            f" Over the {len(series['jobs'])} jobs of this Train run: Train {_seconds(series.get('train_run_s'))} s, "
            f"{float(series.get('cpu_s') or 0):.0f} CPU-seconds, {float(series.get('gpu_s') or 0):.0f} GPU-seconds."
        )
    return text


def usage_metrics(usage: Mapping[str, Any]) -> dict[str, float]:
    """The figures for the MLflow run: ``usage_<figure>`` for this try, ``usage_series_<figure>`` summed."""
    metrics = {f"usage_{k}": float(usage[k]) for k in MLFLOW_FIGURES if usage.get(k) is not None}
    series = usage.get("series") or {}
    metrics.update({f"usage_series_{k}": float(series[k]) for k in MLFLOW_FIGURES if series.get(k) is not None})
    return metrics


__all__ = ["task_usage", "usage_metrics", "usage_sentence"]
