"""Which Ray clusters the runtime runs on, checked by the driver before it builds anything: on a cluster it
cannot run on, the job fails at once with a message that names the cluster's Ray and Python and the oldest Ray
supported, never half way through a fit.

The runtime builds on Ray Train V2 (``ray.train.UserCallback``, ``FailureConfig(controller_failure_limit=)``,
``RunConfig(worker_runtime_env=)``), Ray's default since 2.51; ``make compat`` runs it on the Ray releases
docs/versions.md lists.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
from typing import Any

#: The oldest Ray release the runtime is tested on (docs/versions.md).
MIN_RAY_VERSION = (2, 52)
#: Ray's switch between Train V1 and V2 (V2 unless it is set to 0).
TRAIN_V2_ENV = "RAY_TRAIN_V2_ENABLED"


class UnsupportedClusterError(RuntimeError):
    """The Ray cluster cannot run this runtime; the message says why and what to change."""


def version_tuple(version: str) -> tuple[int, ...]:
    """``2.52.1`` -> ``(2, 52, 1)``; a dev or rc suffix is ignored, a version without numbers is ``()``."""
    found = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in found.group(0).split(".")) if found else ()


def cluster_problem(ray_version: str, python_version: str, train_v2: bool, has_torch: bool) -> str | None:
    """Why a cluster with these versions cannot run the runtime (a message with the fix), or None if it can."""
    oldest = ".".join(map(str, MIN_RAY_VERSION))
    where = f"This Ray cluster runs Ray {ray_version} on Python {python_version}"
    if version_tuple(ray_version)[:2] < MIN_RAY_VERSION:
        return (
            f"{where}; airflow-ray-train needs Ray {oldest} or newer (Ray Train V2). "
            f"Fix: upgrade the cluster to ray[train]>={oldest}, or run the job on a newer cluster."
        )
    if not train_v2:
        return (
            f"{where} with Ray Train V2 turned off ({TRAIN_V2_ENV}=0); airflow-ray-train needs the V2 API "
            f"(Ray {oldest} or newer with V2 on). Fix: unset {TRAIN_V2_ENV} on the cluster (or set it to 1)."
        )
    if not has_torch:
        return (
            f"{where} without torch, which TorchTrainer needs. Fix: install torch (and your framework) in the "
            "cluster's Python on every node, or add it to the job's runtime_env (pip)."
        )
    return None


def elastic_problem(ray_version: str, has_elastic: bool, workers: list[int]) -> str | None:
    """Why a cluster cannot train with ``num_workers`` a range (Ray Train's elastic training, which Ray 2.52's
    ``ScalingConfig`` lacks and 2.60's has), or None if it can."""
    if has_elastic:
        return None
    return (
        f"scaling_config.num_workers is {workers}, a range for elastic training, but this Ray cluster runs Ray "
        f"{ray_version}, whose Ray Train has no elastic training (ScalingConfig(num_workers=(min, max)) came after "
        f"it; Ray 2.60 has it). Fix: give a fixed number of workers, e.g. num_workers={workers[1]}, or upgrade "
        "the cluster's Ray."
    )


def scaling_config_kwargs(scaling_config: dict[str, Any]) -> dict[str, Any]:
    """``ScalingConfig`` kwargs from the spec's ``scaling_config``: a ``[min, max]`` range becomes the tuple Ray
    Train takes for elastic training; raises ``UnsupportedClusterError`` where this Ray has none."""
    import ray
    from ray.train import ScalingConfig

    kwargs = dict(scaling_config)
    workers = kwargs.get("num_workers")
    if isinstance(workers, list):
        problem = elastic_problem(ray.__version__, hasattr(ScalingConfig, "elasticity_enabled"), workers)
        if problem is not None:
            raise UnsupportedClusterError(problem)
        kwargs["num_workers"] = (int(workers[0]), int(workers[1]))
    return kwargs


def check_cluster() -> None:
    """Raise ``UnsupportedClusterError`` when the cluster this driver runs on cannot run the runtime."""
    import ray

    problem = cluster_problem(
        ray_version=ray.__version__,
        python_version=platform.python_version(),
        train_v2=os.environ.get(TRAIN_V2_ENV, "1").strip().lower() in ("1", "true"),
        has_torch=importlib.util.find_spec("torch") is not None,
    )
    if problem is not None:
        raise UnsupportedClusterError(problem)
