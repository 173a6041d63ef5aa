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
