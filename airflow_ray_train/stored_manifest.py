"""A finished job's manifest read from storage: ``<storage>/<run>/airflow_ray_train/<submission_id>/manifest.json``,
which the driver writes (write then rename) before it prints the manifest, error or not.

The result never depends on the log alone: where the log cannot give the manifest (its line too long, the log
gone with a restarted head, too big to read), the task reads this file. It is bound to the job like the printed
one (its ``submission_id`` must be the job's). It can be read where Airflow sees the run's storage: a shared
path, a URI ``pyarrow.fs`` opens (s3://, gs://, with pyarrow installed on the Airflow side), or, for the embedded
head on this machine, Ray's default ``~/ray_results``.
"""

from __future__ import annotations

import os

from airflow_ray_train_runtime.spec import ResultManifest, SpecError
from airflow_ray_train_runtime.storage import Storage, job_folder

#: Where Ray Train keeps runs whose ``storage_path`` is not set, on the driver's node.
RAY_DEFAULT_STORAGE = "~/ray_results"


def manifest_file(run_name: str, submission_id: str) -> str:
    """The manifest's path relative to the storage path."""
    return f"{job_folder(run_name, submission_id)}/manifest.json"


def read_stored_manifest(
    storage_path: str | None, run_name: str, submission_id: str, *, embedded: bool
) -> tuple[ResultManifest | None, str]:
    """The job's manifest from storage, or None and why it could not be read (a phrase)."""
    if not storage_path:
        if not embedded:
            return None, "the run's storage is the cluster's default, which this side cannot see"
        storage_path = RAY_DEFAULT_STORAGE
    storage = Storage(os.path.expanduser(storage_path))
    relative = manifest_file(run_name, submission_id)
    try:
        text = storage.read_text(relative)
    except ImportError:
        return None, f"reading {storage.join(relative)} needs pyarrow on the Airflow side"
    except OSError as exc:
        return None, f"{storage.join(relative)} could not be read ({exc})"
    if text is None:
        return None, f"there is no {storage.join(relative)}"
    try:
        manifest = ResultManifest.from_json(text)
    except SpecError as exc:
        return None, f"{storage.join(relative)} cannot be read ({exc})"
    if manifest.submission_id != submission_id:
        return None, f"{storage.join(relative)} names job {manifest.submission_id!r}, not {submission_id!r}"
    return manifest, storage.join(relative)
