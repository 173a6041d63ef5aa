"""Content-addressed code packages for ``runtime_env.py_modules``.

The hook zips the runtime and the user's code the way Ray unpacks ``py_modules`` (the zip's top level is
put on ``PYTHONPATH``) and names each zip by the hash of its bytes, so an unchanged package is found on
the cluster and never uploaded twice. Zips are built reproducibly (sorted entries, fixed timestamps).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import io
import os
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
RUNTIME_PACKAGE = "airflow_ray_train"


class CodeLookupError(ValueError):
    """The training code cannot be found or packaged where Airflow runs."""


@dataclass(frozen=True)
class Package:
    """A zip ready for ``PUT /api/packages/gcs/<name>``, and the ``gcs://`` URI it will have."""

    source: str
    data: bytes

    @property
    def name(self) -> str:
        return f"_ray_pkg_{hashlib.sha256(self.data).hexdigest()[:32]}.zip"

    @property
    def uri(self) -> str:
        return f"gcs://{self.name}"


def _zip(entries: list[tuple[str, Path]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, path in sorted(entries):
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _tree(root: Path, arc_root: str) -> list[tuple[str, Path]]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for filename in filenames:
            if filename.endswith(_SKIP_SUFFIXES) or filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            entries.append((f"{arc_root}/{path.relative_to(root).as_posix()}", path))
    return entries


def runtime_package() -> Package:
    """The Ray-side core: ``airflow_ray_train/__init__.py`` and ``airflow_ray_train/runtime/``."""
    root = Path(__file__).resolve().parent
    entries = [(f"{RUNTIME_PACKAGE}/__init__.py", root / "__init__.py")]
    entries += _tree(root / "runtime", f"{RUNTIME_PACKAGE}/runtime")
    return Package(source=str(root / "runtime"), data=_zip(entries))


def _is_installed(path: Path) -> bool:
    install_dirs = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return any(path.is_relative_to(d) for d in install_dirs) or "site-packages" in path.parts


def check_train_func_defined(train_func: str) -> None:
    """Check, without importing the user's module, that ``module:function`` names a top-level definition.

    Parses the module's source where Airflow would import it from. Names made at run time (``__getattr__``,
    ``from x import *``) are given the benefit of the doubt.
    """
    module_name, _, attr_path = train_func.partition(":")
    reason = ""
    try:
        spec = importlib.util.find_spec(module_name)
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
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), filename=spec.origin)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    top = attr_path.split(".")[0]
    if top in names or "__getattr__" in names:
        return
    close = difflib.get_close_matches(top, sorted(names), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise CodeLookupError(
        f"train_func {train_func!r}: {spec.origin} defines no {top!r}.{hint} "
        "Fix: name a function defined at the top level of that module."
    )


def code_package(module_name: str) -> Package | None:
    """Zip the top-level package (or single-file module) that holds ``module_name``, found where Airflow
    imports it. Returns None for code installed in site-packages (it must be installed on the cluster too)
    and for this provider's own runtime (shipped separately)."""
    top = module_name.split(".")[0]
    if top == RUNTIME_PACKAGE:
        return None
    spec = importlib.util.find_spec(top)
    if spec is None:
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
        return Package(source=str(root), data=_zip(_tree(root, top)))
    if not spec.origin or not spec.origin.endswith(".py"):
        return None
    origin = Path(spec.origin).resolve()
    if _is_installed(origin):
        return None
    return Package(source=str(origin), data=_zip([(origin.name, origin)]))
