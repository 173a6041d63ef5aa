"""Which checkpoints a run ends with: the latest, the kept ones with their metrics, and the best, from Ray's
``Result`` when ``fit()`` returned one, else from the reports (a run that was stopped or failed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_ray_train_runtime.reports import json_safe
from airflow_ray_train_runtime.spec import CheckpointRecord, TrainSpec
from airflow_ray_train_runtime.storage import uri_for


@dataclass(frozen=True)
class RunCheckpoints:
    """The checkpoints the manifest names."""

    latest: str | None = None
    best: str | None = None
    kept: list[CheckpointRecord] = field(default_factory=list)
    run_path: str | None = None


def resolve_checkpoints(spec: TrainSpec, result: Any, reports: list[dict[str, Any]]) -> RunCheckpoints:
    """The latest, kept and best checkpoints, with URI schemes restored (Ray drops them)."""
    latest = next((r["checkpoint_path"] for r in reversed(reports) if r["checkpoint_path"]), None)
    run_path = None
    if result is not None:
        if result.checkpoint is not None:
            latest = uri_for(result.checkpoint.filesystem, result.checkpoint.path)
        run_path = uri_for(getattr(result, "filesystem", None), result.path)
        kept = [
            CheckpointRecord(path=path, metrics=json_safe(metrics))
            for ckpt, metrics in result.best_checkpoints or []
            if (path := uri_for(ckpt.filesystem, ckpt.path))
        ]
    else:
        kept = [
            CheckpointRecord(path=r["checkpoint_path"], metrics=r["metrics"]) for r in reports if r["checkpoint_path"]
        ]
        keep = (spec.run_config.get("checkpoint_config") or {}).get("num_to_keep")
        kept = kept[-keep:] if keep else kept
    return RunCheckpoints(latest=latest, best=best_path(spec, kept) or latest, kept=kept, run_path=run_path)


def best_path(spec: TrainSpec, kept: list[CheckpointRecord]) -> str | None:
    """The kept checkpoint that scores best on ``checkpoint_score_attribute`` (else the newest)."""
    checkpoint_config = spec.run_config.get("checkpoint_config") or {}
    attribute = checkpoint_config.get("checkpoint_score_attribute")
    if not kept:
        return None
    if not attribute:
        return kept[-1].path
    scored = [r for r in kept if isinstance(r.metrics.get(attribute), (int, float))]
    if not scored:
        return kept[-1].path
    pick = max if checkpoint_config.get("checkpoint_score_order", "max") == "max" else min
    return pick(scored, key=lambda r: r.metrics[attribute]).path
