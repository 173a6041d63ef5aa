"""Where the examples keep what they make. ``data_dir``: a run's prepared data. ``promote``: the model registry
of the Asset example's deploy DAG (the retraining examples use MLflow's Model Registry instead), a local folder
with one folder per model, one sub-folder per deployed version (the framework's own checkpoint files plus
``metrics.json``), and ``champion.json`` naming the version in service. Promotion copies into a temp folder,
then renames, so a reader never sees half a model.

Where it lives: the Airflow Variable ``ray_train_model_registry`` (or the environment variable
``AIRFLOW_VAR_RAY_TRAIN_MODEL_REGISTRY``), else ``model_registry/`` under the provider's default storage
path (``[ray_train] default_storage_path``, else ``~/ray_results``). Read at task run time, never at parse time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

REGISTRY_VARIABLE = "ray_train_model_registry"
CHAMPION_FILE = "champion.json"
METRICS_FILE = "metrics.json"
#: Training state a served model does not need (Trainer's optimizer and scheduler, RNG states).
_NOT_SERVED = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "training_args.bin")


def storage_base() -> str:
    from airflow_ray_train.compat import conf

    return os.path.expanduser(conf.get("ray_train", "default_storage_path", fallback=None) or "~/ray_results")


def registry_root() -> Path:
    from airflow.sdk import Variable

    return Path(Variable.get(REGISTRY_VARIABLE, default=None) or os.path.join(storage_base(), "model_registry"))


def data_dir(dag_id: str, run_id: str) -> str:
    """Where a run's prepared data goes: beside the runs, on storage every Ray node sees."""
    return os.path.join(storage_base(), "datasets", dag_id, re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id))


def promote(root: Path, model_name: str, source: str, metrics: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Copy ``source`` (a checkpoint file or model directory) into a new version and make it the champion."""
    model_root = root / model_name
    model_root.mkdir(parents=True, exist_ok=True)
    versions = [int(p.name[1:]) for p in model_root.glob("v[0-9]*") if p.name[1:].isdigit()]
    version = f"v{max(versions, default=0) + 1:04d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_root))
    src = Path(source)
    if src.is_dir():
        shutil.copytree(src, staging / src.name, ignore=shutil.ignore_patterns(*_NOT_SERVED))
    else:
        shutil.copy2(src, staging / src.name)
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    target = model_root / version
    staging.rename(target)
    record = {
        "model": model_name,
        "version": version,
        "path": str(target / src.name),
        "metrics": metrics,
        "source": source,
        "run_id": run_id,
        "promoted_at": time.time(),
    }
    tmp = model_root / f".{CHAMPION_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, model_root / CHAMPION_FILE)
    return record
