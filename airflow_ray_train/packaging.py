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
import inspect
import io
import os
import sys
import sysconfig
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _zip(entries: list[tuple[str, Path | str]]) -> bytes:
    """A reproducible zip: sorted entries, fixed timestamps and modes. Each entry is a file or a text."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, content in sorted(entries, key=lambda entry: entry[0]):
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content.read_bytes() if isinstance(content, Path) else content)
    return buffer.getvalue()


def _tree(root: Path, arc_root: str) -> list[tuple[str, Path | str]]:
    entries: list[tuple[str, Path | str]] = []
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
    entries: list[tuple[str, Path | str]] = [(f"{RUNTIME_PACKAGE}/__init__.py", root / "__init__.py")]
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
    if top == RUNTIME_PACKAGE or top in sys.stdlib_module_names:
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


_AIRFLOW_ROOTS = ("airflow", "airflow_ray_train")


def _binds(node: ast.stmt) -> set[str]:
    """Names a module-level statement binds."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    if isinstance(node, ast.Assign):
        return {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def _is_airflow_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] in _AIRFLOW_ROOTS for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] in _AIRFLOW_ROOTS and node.level == 0
    return False


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _find_def(body: list[ast.stmt], name: str, first_line: int) -> ast.FunctionDef | None:
    """The ``def name`` whose first line (its first decorator, if any) is ``first_line``, searched through
    ``with``/``if``/``try`` blocks (a TaskFlow function usually sits inside ``with DAG(...)``)."""
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if start == first_line:
                return node
        for child in ("body", "orelse", "finalbody", "handlers"):
            found = (
                _find_def(getattr(node, child, []) or [], name, first_line)
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                else None
            )
            if found is not None:
                return found
    return None


def function_package(func: Callable[..., Any]) -> tuple[Package, str, list[str]]:
    """Ship a function defined in a DAG file without the DAG file: a generated module holding the function
    (decorators stripped) and the module-level imports, functions, classes and constants it uses, found by
    walking the syntax tree. Airflow imports are left behind: the cluster has no Airflow.

    Returns the package, the ``module:function`` path to run, and the top-level modules the generated code
    imports (local ones among them must be shipped too: see ``code_package``).
    """
    source_file = inspect.getsourcefile(func)
    if source_file is None:
        raise CodeLookupError(f"cannot find the source of {func.__qualname__}; define it in a .py file")
    tree = ast.parse(Path(source_file).read_text(encoding="utf-8"), filename=source_file)
    definition = _find_def(tree.body, func.__name__, func.__code__.co_firstlineno)
    if definition is None:
        raise CodeLookupError(f"cannot find `def {func.__name__}` in {source_file}; define it at module level")
    definition.decorator_list = []

    top_level = [n for n in tree.body if _binds(n)]
    keep: list[ast.stmt] = []
    wanted: set[str] = _used_names(definition) - {func.__name__}
    seen: set[str] = set()
    while wanted - seen:
        name = (wanted - seen).pop()
        seen.add(name)
        for node in top_level:
            if name in _binds(node) and node not in keep:
                if _is_airflow_import(node):
                    raise CodeLookupError(
                        f"{func.__name__} uses {name!r}, imported from Airflow in {source_file}; the Ray cluster "
                        "has no Airflow. Fix: use only non-Airflow code inside the training function."
                    )
                keep.append(node)
                wanted |= _used_names(node)
    future = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    ordered = future + [n for n in tree.body if n in keep and n not in future]
    module = ast.Module(body=[*ordered, definition], type_ignores=[])
    code = f'"""Generated by airflow-ray-train from {Path(source_file).name}:{func.__name__}."""\n' + ast.unparse(
        module
    )
    digest = hashlib.sha256(code.encode()).hexdigest()[:16]
    module_name = f"_airflow_ray_train_fn_{digest}"
    package = Package(source=f"{source_file}:{func.__name__}", data=_zip([(f"{module_name}.py", code)]))
    imported = []
    for node in [*ordered, *(n for n in ast.walk(definition) if isinstance(n, (ast.Import, ast.ImportFrom)))]:
        if isinstance(node, ast.Import):
            imported += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module != "__future__":
            imported.append(node.module.split(".")[0])
    return package, f"{module_name}:{func.__name__}", sorted(set(imported))
