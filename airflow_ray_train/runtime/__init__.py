"""The Ray-side core of airflow-ray-train: shipped to the cluster by the hook, never imports Airflow.

It needs ``ray[train]`` and ``torch`` on the cluster; ``spec`` alone needs only the standard library.
"""

from airflow_ray_train.runtime.spec import SCHEMA_VERSION, CheckpointRecord, ResultManifest, SpecError, TrainSpec

__all__ = ["SCHEMA_VERSION", "CheckpointRecord", "ResultManifest", "SpecError", "TrainSpec"]
