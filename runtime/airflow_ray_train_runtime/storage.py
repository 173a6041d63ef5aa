"""Where a run's files go: a local or shared path, or a ``pyarrow.fs`` URI (``s3://``, ``gs://`` ...)."""

from __future__ import annotations

import os
from typing import Any

_SCHEMES = {"local": "", "s3": "s3", "gcs": "gs", "hdfs": "hdfs", "abfs": "abfs"}
#: The folder of a run that holds the provider's files: each job's ``<submission_id>/manifest.json`` (which the
#: Airflow side reads when a job's log cannot give its manifest) and the finished training's record.
MANIFEST_DIR = "airflow_ray_train"


def job_folder(run_name: str, submission_id: str) -> str:
    """Where a job's files go, relative to the storage path: ``<run>/airflow_ray_train/<submission_id>``."""
    return f"{run_name}/{MANIFEST_DIR}/{submission_id}"


def uri_for(filesystem: Any, path: str | None) -> str | None:
    """Give a storage path back its scheme: Ray drops it (``s3://b/p`` comes back as ``b/p``)."""
    if path is None:
        return None
    type_name = str(getattr(filesystem, "type_name", "local"))
    if type_name.startswith("py::fsspec+"):
        scheme = type_name.removeprefix("py::fsspec+").split("+")[0].split(",")[0].strip("()'\"")
    else:
        scheme = _SCHEMES.get(type_name, type_name)
    if not scheme or scheme in ("file", "local"):
        return path
    return f"{scheme}://{path.lstrip('/')}" if "://" not in path else path


class Storage:
    """Reads and writes small files in the run's storage. The filesystem is opened on first use, so a storage
    that cannot be reached fails that read or write, not the run's bookkeeping."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.is_uri = "://" in root and not root.startswith("file://")
        self._fs: Any = None
        self._fs_root = root.removeprefix("file://")

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def write_text(self, relative: str, text: str) -> str:
        return self.write_bytes(relative, text.encode())

    def _target(self, relative: str) -> str:
        if self.is_uri and self._fs is None:
            import pyarrow.fs

            self._fs, self._fs_root = pyarrow.fs.FileSystem.from_uri(self.root)
        return "/".join([self._fs_root.rstrip("/"), relative])

    def read_text(self, relative: str) -> str | None:
        """The file's text, or None when there is no such file."""
        target = self._target(relative)
        if self._fs is None:
            try:
                with open(target, encoding="utf-8") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None
        try:
            with self._fs.open_input_stream(target) as stream:
                return bytes(stream.read()).decode()
        except FileNotFoundError:
            return None

    def list_dir(self, relative: str) -> list[str]:
        """The names of the entries in a folder; empty when there is no such folder."""
        target = self._target(relative)
        if self._fs is None:
            try:
                return sorted(os.listdir(target))
            except (FileNotFoundError, NotADirectoryError):
                return []
        import pyarrow.fs

        try:
            infos = self._fs.get_file_info(pyarrow.fs.FileSelector(target, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(info.base_name for info in infos)

    def write_bytes(self, relative: str, data: bytes) -> str:
        """Write then rename, so a reader never sees half a file. Returns the file's path or URI."""
        target = self._target(relative)
        tmp = f"{target}.tmp-{os.getpid()}"
        if self._fs is None:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        else:
            self._fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with self._fs.open_output_stream(tmp) as stream:
                stream.write(data)
            self._fs.move(tmp, target)
        return self.join(relative)
