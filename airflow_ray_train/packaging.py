"""Content-addressed code packages for ``runtime_env.py_modules``.

The hook zips the runtime and the user's code the way Ray unpacks ``py_modules`` (the zip's top level is
put on ``PYTHONPATH``) and names each zip by the hash of its bytes, so an unchanged package is found on
the cluster and never uploaded twice. Zips are built reproducibly (sorted entries, fixed timestamps) in a
temporary file, and uploaded from it in pieces.

What ships from a package folder follows the conventions of Ray's own ``working_dir``: ``.gitignore`` and
``.rayignore`` files (gitignore syntax, in the folder and below) are honoured on top of ``DEFAULT_EXCLUDES``
(a line in them leaves out more; a ``!pattern`` ships a file the defaults leave out), a symlink that leaves
the folder is skipped, and a package over ``MAX_PACKAGE_BYTES`` is refused naming its biggest files. The
defaults start with ``SECRET_EXCLUDES``: files that likely hold credentials never leave the Airflow machine
unless an ignore file names them with ``!``.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.machinery
import importlib.util
import io
import json
import logging
import os
import shutil
import symtable
import sys
import sysconfig
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from pathspec import GitIgnoreSpec

if TYPE_CHECKING:
    from airflow_ray_train_runtime.spec import TrainSpec

log = logging.getLogger(__name__)

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1024 * 1024
#: The Ray-side runtime (its own distribution, ``airflow-ray-train-runtime``) and the provider: neither ships
#: as the user's code; the runtime ships as itself (``runtime_package``).
RUNTIME_PACKAGE = "airflow_ray_train_runtime"
PROVIDER_PACKAGE = "airflow_ray_train"
IGNORE_FILES = (".gitignore", ".rayignore")
#: Files that likely hold credentials (gitignore syntax, at any depth): environment files, private keys and
#: keystores, cloud service-account and credentials files, secrets files, tokens, Terraform state and
#: variables, kubeconfigs and Airflow's own configuration. Not ``*token*``: it would leave out tokenizers.
SECRET_EXCLUDES = (
    ".*",  # .env, .env.*, .netrc, .pgpass, .git-credentials, .pypirc, .aws/, .kube/, .ssh/, ...
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.ppk",
    "*.keytab",
    "*.kdbx",
    "*.gpg",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "_netrc",
    "htpasswd",
    "sa.json",
    "*-sa.json",
    "*_sa.json",
    "*service-account*.json",
    "*service_account*.json",
    "*serviceaccount*.json",
    "application_default_credentials.json",
    "client_secret*.json",
    "credentials",
    "credentials.*",
    "*credentials*.json",
    "*.credentials",
    "secret",
    "secrets",
    "secret.*",
    "secrets.*",
    "*.secret",
    "*.secrets",
    "*secret*.json",
    "*secret*.yaml",
    "*secret*.yml",
    "*secret*.toml",
    "token",
    "token.txt",
    "token.json",
    "*token.txt",
    "*token.json",
    "*.token",
    "*.tfstate",
    "*.tfstate.*",
    "*.tfvars",
    "*.tfvars.json",
    "kubeconfig",
    "kubeconfig.*",
    "*.kubeconfig",
    "airflow.cfg",
    "webserver_config.py",
)
#: Left out of every package folder unless an ignore file re-includes them (``!name``): ``SECRET_EXCLUDES``,
#: bytecode, checkpoints and weights, data files and training outputs.
DEFAULT_EXCLUDES = (
    *SECRET_EXCLUDES,
    "__pycache__/",
    "*.py[cod]",
    "*.ckpt",
    "*.pt",
    "*.pth",
    "*.safetensors",
    "*.h5",
    "*.onnx",
    "*.pkl",
    "*.pickle",
    "*.joblib",
    "*.csv",
    "*.tsv",
    "*.jsonl",
    "*.parquet",
    "*.arrow",
    "*.feather",
    "*.npy",
    "*.npz",
    "*.tfrecord",
    "*.db",
    "*.sqlite",
    "*.zip",
    "*.tar",
    "*.tar.gz",
    "*.tgz",
    "checkpoints/",
    "lightning_logs/",
    "ray_results/",
    "mlruns/",
    "wandb/",
)
_DEFAULT_SPEC = GitIgnoreSpec.from_lines(DEFAULT_EXCLUDES)
#: The most a package folder may hold (its files, before compression). The Ray dashboard takes uploads of up
#: to 100 MiB; code is far smaller, so a bigger package is data or checkpoints that slipped in.
MAX_PACKAGE_BYTES = 50 * 1024 * 1024


class CodeLookupError(ValueError):
    """The training code cannot be found or packaged where Airflow runs."""


class _FileChunks:
    """A file's bytes in pieces, read again each time it is iterated, so a retried upload sends it whole."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self.file = file
        self.size = size

    def __iter__(self) -> Iterator[bytes]:
        offset = 0
        while offset < self.size:
            chunk = os.pread(self.file.fileno(), min(_CHUNK, self.size - offset), offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk


@dataclass(frozen=True)
class Package:
    """A zip ready for ``PUT /api/packages/gcs/<name>``, and the ``gcs://`` URI it will have.

    The zip is an unnamed temporary file (``tempfile.TemporaryFile``): it has no name in the temp folder, so
    nothing is left there however the process ends. Airflow's task processes end with ``os._exit``, which runs
    no finalizer: named zips piled up in ``/tmp``, one per task run. The file is closed (and its space freed)
    when the ``Package`` is garbage collected or the process exits.
    """

    source: str
    sha256: str
    size: int
    file: BinaryIO = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        weakref.finalize(self, self.file.close)

    @property
    def name(self) -> str:
        return f"_ray_pkg_{self.sha256[:32]}.zip"

    @property
    def uri(self) -> str:
        return f"gcs://{self.name}"

    def chunks(self) -> _FileChunks:
        """The zip's bytes, read from the file in pieces (an upload body that can be sent again)."""
        return _FileChunks(self.file, self.size)

    def read_bytes(self) -> bytes:
        return b"".join(self.chunks())

    def archive(self) -> zipfile.ZipFile:
        """The zip, opened for reading (tests and tools look inside)."""
        return zipfile.ZipFile(io.BytesIO(self.read_bytes()))


def build_zip(source: str, entries: list[tuple[str, Path | str]]) -> Package:
    """A reproducible zip of ``entries`` (archive name, then a file or a text) in an unnamed temporary file: sorted
    entries, fixed timestamps and modes, so the same content gets the same name."""
    raw = tempfile.TemporaryFile(prefix="airflow_ray_train_", suffix=".zip")
    try:
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for arcname, content in sorted(entries, key=lambda entry: entry[0]):
                info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                if isinstance(content, str):
                    archive.writestr(info, content)
                    continue
                try:
                    with content.open("rb") as src, archive.open(info, "w") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                except OSError as exc:
                    raise CodeLookupError(
                        f"cannot read {content} to ship it ({exc.strerror or exc}). Fix: make it readable by the "
                        f"Airflow worker, or list it in a .rayignore file in {source}."
                    ) from exc
        raw.flush()
        size = raw.seek(0, os.SEEK_END)
        digest = hashlib.sha256()
        for chunk in _FileChunks(raw, size):
            digest.update(chunk)
    except BaseException:
        raw.close()
        raise
    return Package(source=source, sha256=digest.hexdigest(), size=size, file=raw)


def _ignore_rules(directory: Path, rel: PurePosixPath) -> list[tuple[PurePosixPath, GitIgnoreSpec]]:
    rules = []
    for name in IGNORE_FILES:
        ignore_file = directory / name
        if ignore_file.is_file():
            rules.append((rel, GitIgnoreSpec.from_lines(ignore_file.read_text(encoding="utf-8").splitlines())))
    return rules


def _excluded(rel: PurePosixPath, is_dir: bool, rules: list[tuple[PurePosixPath, GitIgnoreSpec]]) -> bool:
    """Whether the last rule that matches ``rel`` (defaults, then ignore files from the top down) excludes it."""
    excluded = False
    for base, spec in rules:
        relative = rel.relative_to(base).as_posix() + ("/" if is_dir else "")
        verdict = spec.check_file(relative).include
        if verdict is not None:
            excluded = verdict
    return excluded


def _symlink_target(root: Path, path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise CodeLookupError(
            f"cannot ship {path}: it is a symlink to {os.readlink(path)!r}, which does not exist. "
            f"Fix: remove the link, or list it in {root / '.rayignore'}."
        ) from exc


def _walk(
    root: Path,
    directory: Path,
    rel: PurePosixPath,
    rules: list[tuple[PurePosixPath, GitIgnoreSpec]],
    active: frozenset[Path],
    found: list[tuple[PurePosixPath, Path, int]],
) -> None:
    rules = rules + _ignore_rules(directory, rel)
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        entry_rel, path = rel / entry.name, Path(entry.path)
        is_dir = entry.is_dir()
        if _excluded(entry_rel, is_dir, rules):
            continue
        if entry.is_symlink():
            target = _symlink_target(root, path)
            if not target.is_relative_to(root):
                log.warning("Not shipping %s: it is a symlink to %s, outside %s", path, target, root)
                continue
        if is_dir:
            real = path.resolve()
            if real not in active:  # a link to a folder above it would loop
                _walk(root, path, entry_rel, rules, active | {real}, found)
        elif entry.is_file():
            found.append((entry_rel, path, entry.stat().st_size))


def _human(size: int) -> str:
    if size < 2**10:
        return f"{size} B"
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def _check_size(root: Path, files: list[tuple[PurePosixPath, Path, int]]) -> None:
    total = sum(size for _, _, size in files)
    if total <= MAX_PACKAGE_BYTES:
        return
    biggest = sorted(files, key=lambda file: -file[2])[:5]
    listed = ", ".join(f"{rel} ({_human(size)})" for rel, _, size in biggest)
    raise CodeLookupError(
        f"{root} holds {_human(total)} of files to ship, over the {_human(MAX_PACKAGE_BYTES)} a code package may "
        f"hold. Biggest: {listed}. Fix: list data, checkpoints and other large files in {root / '.rayignore'} "
        "(gitignore syntax) and read them from storage in the training code, or install the package on the "
        "cluster and pass ship_code=False."
    )


def _tree(root: Path, arc_root: str) -> list[tuple[str, Path | str]]:
    """The files of the folder ``root`` that ship, under ``arc_root`` in the zip (see the module docstring)."""
    root = root.resolve()
    found: list[tuple[PurePosixPath, Path, int]] = []
    _walk(root, root, PurePosixPath(), [(PurePosixPath(), _DEFAULT_SPEC)], frozenset({root}), found)
    _check_size(root, found)
    return [(f"{arc_root}/{rel.as_posix()}", path) for rel, path, _ in found]


def runtime_package() -> Package:
    """The Ray-side core, the ``airflow_ray_train_runtime`` package where Airflow imports it from."""
    import airflow_ray_train_runtime

    root = Path(airflow_ray_train_runtime.__file__).resolve().parent
    return build_zip(str(root), _tree(root, RUNTIME_PACKAGE))


def spec_package(spec: TrainSpec, credentials: dict[str, str] | None = None) -> Package:
    """The spec as a file in a package of its own, shipped beside the code: a command line holds 128 KiB
    at most, and what is on it shows in ``ps`` and on the dashboard. Raises ``CodeLookupError`` (naming
    ``train_loop_config``, where size comes from) when it is over what a package may hold.

    ``credentials`` (the MLflow client's ``MLFLOW_TRACKING_*`` variables) travel as a second file,
    ``spec.credentials_file``: never in the spec, the entrypoint, the job's metadata or its ``runtime_env``
    (the dashboard shows those), only in the package, which the dashboard names but does not show."""
    text = spec.to_json()
    if len(text.encode()) > MAX_PACKAGE_BYTES:
        config = json.dumps(spec.train_loop_config, separators=(",", ":")).encode()
        raise CodeLookupError(
            f"the TrainSpec is {_human(len(text.encode()))} as JSON (train_loop_config {_human(len(config))}), "
            f"over the {_human(MAX_PACKAGE_BYTES)} a package shipped to the cluster may hold. Fix: put the data in "
            "storage every node reads (a path or a URI such as s3://...) and pass its location in "
            "train_loop_config; read it inside train_func."
        )
    entries: list[tuple[str, Path | str]] = [(spec.shipped_file, text)]
    if credentials:
        entries.append((spec.credentials_file, json.dumps(credentials, sort_keys=True)))
    return build_zip(f"the TrainSpec of {spec.submission_id}", entries)


def _is_installed(path: Path) -> bool:
    install_dirs = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return any(path.is_relative_to(d) for d in install_dirs) or "site-packages" in path.parts


def module_bindings(source: str, filename: str) -> set[str] | None:
    """The names a module binds at its top level, wherever the binding sits (``if``/``try``/``with`` blocks,
    tuple targets, imports); None when a star import makes them unknowable."""
    tree = ast.parse(source, filename)
    if any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in ast.walk(tree)):
        return None
    table = symtable.symtable(source, filename, "exec")
    return {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}


def refuse_standard_library(train_func: str) -> None:
    """A standard-library function is not a training loop: a ``train_func`` templated from run conf could
    otherwise name, say, ``subprocess:run``. Checked whether the code is shipped or installed on the cluster."""
    if train_func.partition(":")[0].split(".")[0] in sys.stdlib_module_names:
        raise CodeLookupError(
            f"train_func {train_func!r} is in Python's standard library, not a training loop. "
            "Fix: name your function, 'package.module:function'."
        )


def locate_module(name: str) -> importlib.machinery.ModuleSpec | None:
    """Where the module ``name`` would be imported from, found the way ``import`` finds it (the import system's
    finders, a package's ``__path__`` for its submodules), but without running any of its code: unlike
    ``importlib.util.find_spec``, no parent package's ``__init__`` is executed. A name from run conf is looked
    up before anything of it runs."""
    path: list[str] | None = None
    spec = None
    parts = name.split(".")
    for index in range(len(parts)):
        prefix = ".".join(parts[: index + 1])
        loaded = sys.modules.get(prefix)
        if loaded is not None:
            spec = getattr(loaded, "__spec__", None)
        else:
            spec = next(
                (found for finder in sys.meta_path if (found := _finder_spec(finder, prefix, path)) is not None), None
            )
        if spec is None:
            return None
        if index < len(parts) - 1:
            if spec.submodule_search_locations is None:
                return None  # a module, not a package: it has no submodules
            path = list(spec.submodule_search_locations)
    return spec


def _finder_spec(finder: object, name: str, path: list[str] | None) -> importlib.machinery.ModuleSpec | None:
    find_spec = getattr(finder, "find_spec", None)
    return None if find_spec is None else find_spec(name, path)


def check_train_func_defined(train_func: str) -> None:
    """Check, without importing the user's module, that ``module:function`` names a top-level definition.

    Parses the module's source where Airflow would import it from. Names made at run time (``__getattr__``,
    ``from x import *``) are given the benefit of the doubt. A standard-library function is refused: it is
    not a training loop (a ``train_func`` templated from run conf could otherwise name, say, ``subprocess:run``).
    """
    module_name, _, attr_path = train_func.partition(":")
    refuse_standard_library(train_func)
    reason = ""
    try:
        spec = locate_module(module_name)
    except (ImportError, ValueError) as exc:
        spec, reason = None, f" ({exc})"
    if spec is None:
        raise CodeLookupError(
            f"train_func {train_func!r}: module {module_name!r} is not importable where Airflow runs{reason}. "
            "Fix: put the module next to your DAG file (the dags folder is on sys.path) or install it; if it is "
            "installed on the Ray cluster only, pass ship_code=False."
        )
    if not spec.origin or not spec.origin.endswith(".py") or not os.path.exists(spec.origin):
        return
    names = module_bindings(Path(spec.origin).read_text(encoding="utf-8"), spec.origin)
    top = attr_path.split(".")[0]
    if names is None or top in names or "__getattr__" in names:
        return
    close = difflib.get_close_matches(top, sorted(names), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise CodeLookupError(
        f"train_func {train_func!r}: {spec.origin} defines no {top!r}.{hint} "
        "Fix: name a function defined at the top level of that module."
    )


def code_package(module_name: str, *, required: bool = True) -> Package | None:
    """Zip the top-level package (or single-file module) that holds ``module_name``, found where Airflow
    imports it. Returns None for code installed in site-packages (it must be installed on the cluster too),
    for this provider's own runtime (shipped separately), and, unless ``required``, for a module Airflow
    cannot import (it must be installed on the cluster)."""
    top = module_name.split(".")[0]
    if top in (RUNTIME_PACKAGE, PROVIDER_PACKAGE) or top in sys.stdlib_module_names:
        return None
    spec = importlib.util.find_spec(top)
    if spec is None:
        if not required:
            return None
        raise CodeLookupError(f"module {top!r} is not importable where Airflow runs")
    locations = list(spec.submodule_search_locations or [])
    if locations:
        if len(locations) != 1:
            raise CodeLookupError(
                f"package {top!r} spans several directories {locations}; ship one directory, "
                "or install the package on the cluster and pass ship_code=False"
            )
        root = Path(locations[0]).resolve()
        if _is_installed(root):
            return None
        return build_zip(str(root), _tree(root, top))
    if not spec.origin or not spec.origin.endswith(".py"):
        return None
    origin = Path(spec.origin).resolve()
    if _is_installed(origin):
        return None
    return build_zip(str(origin), [(origin.name, origin)])
