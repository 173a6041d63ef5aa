"""What the framework helpers share: optional imports that fail with the pip command, and import paths.

Lightning and Transformers are optional: nothing here imports them at module level, so the runtime (and
an Airflow worker that only builds a spec) works without them, and a missing one fails where it is first
needed with the command that installs it.

An import path can be templated from ``dag_run.conf``, so whoever triggers the DAG may choose it: what is
imported is checked to be what the field expects (``import_function``, ``import_class``) before it is called.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, Self

from airflow_ray_train_runtime.spec import check_keys

#: The pip command for each optional framework, as the error message gives it.
PIP_INSTALL = {
    "lightning": 'pip install "pytorch-lightning>=2.1"',
    "transformers": 'pip install "transformers>=4.46" accelerate',
    "datasets": 'pip install "datasets>=2.18"',
    "deepspeed": "pip install deepspeed",
    "matplotlib": "pip install matplotlib",
    "mlflow": 'pip install "mlflow-skinny==3.17.2"',
}
_DISPLAY_NAMES = {
    "lightning": "PyTorch Lightning",
    "transformers": "HuggingFace Transformers",
    "datasets": "HuggingFace Datasets",
    "mlflow": "MLflow",
}
#: The extra of this provider that installs each framework (``frameworks`` unless named here).
_EXTRAS = {"mlflow": "mlflow"}


class FrameworkNotInstalledError(ImportError):
    """An optional framework is missing where the code runs. ``pip_command`` installs it."""

    def __init__(self, framework: str, purpose: str, cause: BaseException | None = None) -> None:
        self.framework = framework
        self.pip_command = PIP_INSTALL[framework]
        extra = _EXTRAS.get(framework, "frameworks")
        detail = f" ({cause})" if cause is not None else ""
        super().__init__(
            f"{_DISPLAY_NAMES.get(framework, framework)} is not installed here{detail}, and {purpose} needs it. "
            f"Fix: {self.pip_command} "
            "where this runs (on a Ray cluster: every node, or the job's runtime_env={'pip': [...]}), "
            f"or install this provider with its {extra} extra: pip install 'airflow-ray-train[{extra}]'.",
            name=framework,
        )


def require(framework: str, module: str, purpose: str) -> ModuleType:
    """Import ``module`` of an optional ``framework``, or raise ``FrameworkNotInstalledError``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if isinstance(exc, FrameworkNotInstalledError):
            raise
        missing = (exc.name or "").split(".")[0]
        # Only the framework itself missing gets the pip hint; a broken import inside it is another problem.
        if missing and missing != module.split(".")[0]:
            raise
        raise FrameworkNotInstalledError(framework, purpose, exc) from exc


_SHIP_FIX = "ship it with the operator's ship_modules=[...] or install it on the cluster."


def import_object(
    path: str,
    what: str,
    *,
    error: type[ImportError] = ImportError,
    fix: str = _SHIP_FIX,
) -> Any:
    """Import ``"package.module:Attribute"`` (a class or a function) named by the field ``what``; a failure
    raises ``error`` saying what is missing and ``fix``."""
    module_name, sep, attr_path = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"{what} is {path!r}. Fix: give an import path 'package.module:Name'.")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(
            f"{what} {path!r}: module {module_name!r} is not importable on the cluster ({exc}). Fix: {fix}"
        ) from exc
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError as exc:
            raise error(
                f"{what} {path!r}: {module_name!r} has no attribute {attr_path!r}. Fix: check the name after the ':'."
            ) from exc
    return target


def import_function(
    path: str, what: str, *, error: type[ImportError] = ImportError, fix: str = _SHIP_FIX
) -> Callable[..., Any]:
    """``import_object``, checked to be a function written in Python outside the standard library (a path from
    run conf must not call, say, ``subprocess:run`` with the config); else raises ``error``."""
    target = import_object(path, what, error=error, fix=fix)
    if not inspect.isfunction(target):
        raise error(
            f"{what} {path!r} is {_kind(target)}, not a function defined with `def`. "
            "Fix: give the import path of your function, 'package.module:function'."
        )
    if target.__module__.split(".")[0] in sys.stdlib_module_names:
        raise error(
            f"{what} {path!r} is {target.__module__}.{target.__qualname__}, from Python's standard library. "
            "Fix: give the import path of your function, 'package.module:function'."
        )
    return target


def import_class(path: str, what: str, base: type) -> type:
    """``import_object``, checked to be a subclass of ``base``; else raises ``TypeError``."""
    target = import_object(path, what)
    if not (isinstance(target, type) and issubclass(target, base)):
        raise TypeError(
            f"{what} {path!r} is {_kind(target)}, not a subclass of {base.__module__}.{base.__qualname__}. "
            f"Fix: give the import path of your {base.__name__} class, 'package.module:ClassName'."
        )
    return target


def _kind(target: Any) -> str:
    if isinstance(target, type):
        return f"the class {target.__module__}.{target.__qualname__}"
    return f"a {type(target).__module__}.{type(target).__qualname__}"


def worker_device(tag: str) -> Any:
    """The torch device Ray gave this Train worker, said in the job log (``[tag] worker 0/2 trains on cuda:0
    (NVIDIA H200)``) so a reader sees where training ran; call it inside the per-worker loop."""
    import ray.train
    import ray.train.torch
    import torch

    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    named = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"[{tag}] worker {context.get_world_rank()}/{context.get_world_size()} trains on {device}{named}", flush=True)
    return device


def module_of(path: str) -> str:
    """The module part of ``"package.module:Name"``: what the operator must ship for the path to import."""
    return path.partition(":")[0]


class DeclarativeConfig:
    """What the declarative loops' configs (dataclasses) share: they travel as the operator's
    ``train_loop_config`` and are read back, unknown keys refused with the field list, on every worker."""

    def train_loop_config(self) -> dict[str, Any]:
        """The operator's ``train_loop_config``."""
        return dict(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_train_loop_config(cls, config: dict[str, Any]) -> Self:
        fields = {field.name: None for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        check_keys(cls.__name__, "", config, fields, cls.__name__)
        return cls(**config)


def fit_or_resume(fit: Callable[[str | None], Any], tag: str, inside: str) -> None:
    """Call ``fit(None)``, or ``fit(<checkpoint>/<inside>)`` when Ray hands back a checkpoint to resume from
    (a retry, or a worker group restarted after a failure)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        fit(None)
        return
    with checkpoint.as_directory() as ckpt_dir:
        print(f"[{tag}] resuming from {checkpoint.path}", flush=True)
        fit(os.path.join(ckpt_dir, inside))
