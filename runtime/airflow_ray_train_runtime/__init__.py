"""The Ray-side core of airflow-ray-train (the distribution ``airflow-ray-train-runtime``): shipped to the
cluster by the hook with each job, or installed there. Never imports Airflow.

It needs ``ray[train]`` and ``torch`` on the cluster; ``spec`` alone needs only the standard library.
"""

from airflow_ray_train_runtime.spec import (
    RUNTIME_VERSION,
    SCHEMA_VERSION,
    CheckpointRecord,
    ResultManifest,
    SpecError,
    TrainSpec,
)

#: The version of both distributions: the one ``VERSION`` file, read by both pyprojects and shipped with this
#: package.
__version__ = RUNTIME_VERSION

__all__ = ["SCHEMA_VERSION", "CheckpointRecord", "ResultManifest", "SpecError", "TrainSpec", "__version__"]
