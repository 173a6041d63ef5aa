"""PyTorch Lightning on Ray Train workers, converted the way Ray's Lightning guide describes.

Two ways to use it:

- **Your own loop** (``train_func`` is yours): build the ``pl.Trainer`` with :func:`build_trainer`, which sets
  what Ray's guide asks for (``devices="auto"``, ``accelerator="auto"``, ``RayDDPStrategy`` or its FSDP /
  DeepSpeed variant, ``RayLightningEnvironment``, ``RayTrainReportCallback``) and calls ``prepare_trainer``.
  Ray's names are also importable from here (``from airflow_ray_train_runtime.lightning import
  RayDDPStrategy``), resolved on first use.
- **Declarative** (the role Ray's removed ``LightningTrainer``/``LightningConfigBuilder`` played): point the
  operator's ``train_func`` at :data:`LIGHTNING_TRAIN_LOOP` and describe the run with :class:`LightningConfig`:
  the ``LightningModule`` and ``LightningDataModule`` by import path with their kwargs, the ``pl.Trainer``
  kwargs, and the checkpoint ``monitor``/``mode``/``top_k``, which become Ray's ``CheckpointConfig``.

Every epoch ``RayTrainReportCallback`` reports ``trainer.callback_metrics`` under the names your module logs
(``val_loss``...) plus ``epoch`` and ``step``, with a checkpoint holding Lightning's own ``checkpoint.ckpt``:
:func:`checkpoint_file` finds it in the ``checkpoint_path`` a downstream task gets from XCom.

Nothing here imports Lightning or Ray at module level: a missing Lightning fails where it is first needed,
with the pip command that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from airflow_ray_train_runtime.frameworks import (
    DeclarativeConfig,
    FrameworkNotInstalledError,
    fit_or_resume,
    import_class,
    module_of,
    require,
    worker_device,
)
from airflow_ray_train_runtime.spec import SpecError, check_json_value

#: The declarative loop, for the operator's ``train_func``.
LIGHTNING_TRAIN_LOOP = "airflow_ray_train_runtime.lightning:train_loop"
#: The file Ray's ``RayTrainReportCallback`` saves in each checkpoint directory.
CHECKPOINT_FILE = "checkpoint.ckpt"
#: ``strategy`` names and the Ray strategy class each maps to.
STRATEGIES = {"ddp": "RayDDPStrategy", "fsdp": "RayFSDPStrategy", "deepspeed": "RayDeepSpeedStrategy"}
_RAY_NAMES = (
    "RayDDPStrategy",
    "RayFSDPStrategy",
    "RayDeepSpeedStrategy",
    "RayLightningEnvironment",
    "RayTrainReportCallback",
    "prepare_trainer",
)
_PURPOSE = "airflow_ray_train_runtime.lightning"


def import_lightning() -> ModuleType:
    """``lightning.pytorch`` if installed, else ``pytorch_lightning``: the same choice Ray's own
    ``ray.train.lightning`` makes, so your module and Ray's strategies subclass the same classes."""
    try:
        return importlib.import_module("lightning.pytorch")
    except ModuleNotFoundError:
        return require("lightning", "pytorch_lightning", _PURPOSE)


def ray_lightning() -> ModuleType:
    """``ray.train.lightning``, after checking Lightning is installed (Ray's own message names another package)."""
    import_lightning()
    return importlib.import_module("ray.train.lightning")


def __getattr__(name: str) -> Any:
    if name in _RAY_NAMES:
        return getattr(ray_lightning(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_strategy(name: str = "ddp", **strategy_kwargs: Any) -> Any:
    """Ray's strategy for ``name`` (``ddp``, ``fsdp`` or ``deepspeed``), built with ``strategy_kwargs``."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy is {name!r}. Fix: use one of {sorted(STRATEGIES)}.")
    if name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise FrameworkNotInstalledError("deepspeed", "the 'deepspeed' Lightning strategy")
    return getattr(ray_lightning(), STRATEGIES[name])(**strategy_kwargs)


def build_trainer(
    *,
    strategy: str | Any = "ddp",
    strategy_kwargs: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
    progress_every_n_steps: int = 50,
    graceful_stop: bool = True,
    **trainer_kwargs: Any,
) -> Any:
    """A ``pl.Trainer`` set up for Ray Train workers, already passed through ``prepare_trainer``.

    Defaults follow Ray's guide and can be overridden through ``trainer_kwargs``: ``devices="auto"``,
    ``accelerator="auto"``, ``RayLightningEnvironment``; Ray checkpoints every epoch, so Lightning's own
    checkpointing, progress bar and logger are off (metrics still reach Ray through ``self.log``).

    :param strategy: ``"ddp"``, ``"fsdp"``, ``"deepspeed"``, or a Ray strategy object.
    :param callbacks: more Lightning callbacks; ``RayTrainReportCallback`` is always added.
    :param progress_every_n_steps: rank 0 prints the step's metrics every that many steps (0: never).
    :param graceful_stop: add :func:`graceful_stop_callback`: a stopped job's training saves a checkpoint at its
        next step and ends.
    """
    pl = import_lightning()
    ray_pl = ray_lightning()
    if isinstance(strategy, str):
        strategy = make_strategy(strategy, **(strategy_kwargs or {}))
    all_callbacks = [*(callbacks or []), ray_pl.RayTrainReportCallback()]
    if progress_every_n_steps > 0:
        all_callbacks.append(_progress_callback(pl, progress_every_n_steps))
    if graceful_stop:
        all_callbacks.append(graceful_stop_callback())
    kwargs: dict[str, Any] = {
        "devices": "auto",
        "accelerator": "auto",
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "logger": False,
        **trainer_kwargs,
    }
    kwargs["plugins"] = [*kwargs.get("plugins", []), ray_pl.RayLightningEnvironment()]
    trainer = pl.Trainer(strategy=strategy, callbacks=all_callbacks, **kwargs)
    return ray_pl.prepare_trainer(trainer)


def graceful_stop_callback() -> Any:
    """A Lightning callback that takes part in a graceful stop (see ``runtime.stop``): when Airflow stops the
    job, the epoch ends after the current batch (``trainer.should_stop``), so ``RayTrainReportCallback`` reports
    a checkpoint of that step, and the fit ends. For a ``pl.Trainer`` of your own:
    ``callbacks=[graceful_stop_callback(), ...]``."""
    pl = import_lightning()
    from airflow_ray_train_runtime.stop import stop_requested

    class GracefulStop(pl.Callback):  # type: ignore[name-defined,misc]
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if stop_requested() and not trainer.should_stop:
                print(f"[lightning] stopping at step {trainer.global_step}: saving a checkpoint", flush=True)
                trainer.should_stop = True

    return GracefulStop()


def _progress_callback(pl: ModuleType, every_n_steps: int) -> Any:
    class PrintProgress(pl.Callback):  # type: ignore[name-defined,misc]
        """Epoch, step and the step's logged metrics in the log, so a person can follow training."""

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_rank != 0 or trainer.global_step % every_n_steps != 0:
                return
            shown = " ".join(
                f"{name}={float(value):.4g}"
                for name, value in trainer.callback_metrics.items()
                if getattr(value, "numel", lambda: 1)() == 1
            )
            print(f"[lightning] epoch {trainer.current_epoch} step {trainer.global_step} {shown}".rstrip(), flush=True)

    return PrintProgress()


def checkpoint_config(monitor: str | None = None, mode: str = "min", top_k: int | None = None) -> dict[str, Any]:
    """Lightning's ``ModelCheckpoint(monitor, mode, save_top_k)`` as Ray's ``CheckpointConfig`` fields
    (``checkpoint_score_attribute``, ``checkpoint_score_order``, ``num_to_keep``), for ``run_config``.

    ``top_k=-1`` (Lightning's "keep all") keeps all; ``top_k=0`` is refused: Ray keeps at least one.
    """
    if mode not in ("min", "max"):
        raise SpecError("LightningConfig", "mode", f"is {mode!r}", "use 'min' (a loss) or 'max' (an accuracy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k == 0 or top_k < -1):
        raise SpecError(
            "LightningConfig", "top_k", f"is {top_k!r}", "use 1 or more, or -1 (or None) to keep every checkpoint"
        )
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise SpecError("LightningConfig", "monitor", f"is {monitor!r}", "name a metric your module logs")
    config: dict[str, Any] = {}
    if top_k is not None and top_k > 0:
        config["num_to_keep"] = top_k
    if monitor:
        config["checkpoint_score_attribute"] = monitor
        config["checkpoint_score_order"] = mode
    return config


@dataclass(frozen=True)
class LightningConfig(DeclarativeConfig):
    """A declarative Lightning run for :data:`LIGHTNING_TRAIN_LOOP` (JSON values; templated strings are
    fine, they are rendered before the spec is built).

    :param module: ``"package.module:LightningModuleClass"``.
    :param module_kwargs: the module's constructor kwargs.
    :param datamodule: ``"package.module:DataModuleClass"``, or None if the module has its own dataloaders.
    :param datamodule_kwargs: the data module's constructor kwargs.
    :param trainer_kwargs: ``pl.Trainer`` kwargs (``max_epochs``, ``precision``...); Ray's defaults above.
    :param strategy: ``"ddp"`` (default), ``"fsdp"`` or ``"deepspeed"``.
    :param strategy_kwargs: the strategy's kwargs.
    :param monitor: the logged metric that ranks checkpoints (``checkpoint_score_attribute``).
    :param mode: ``"min"`` or ``"max"`` (``checkpoint_score_order``).
    :param top_k: how many checkpoints to keep (``num_to_keep``); None or -1 keeps all.
    :param seed: ``pl.seed_everything`` seed, or None.
    :param progress_every_n_steps: rank 0 prints the step's metrics every that many steps (0: never).
    """

    module: str
    module_kwargs: dict[str, Any] = field(default_factory=dict)
    datamodule: str | None = None
    datamodule_kwargs: dict[str, Any] = field(default_factory=dict)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    strategy: str = "ddp"
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)
    monitor: str | None = None
    mode: str = "min"
    top_k: int | None = None
    seed: int | None = None
    progress_every_n_steps: int = 50

    def __post_init__(self) -> None:
        doc = "LightningConfig"
        for name in ("module", "datamodule"):
            value = getattr(self, name)
            if value is None and name == "datamodule":
                continue
            if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
                raise SpecError(doc, name, f"is {value!r}", "give an import path 'package.module:ClassName'")
        for name in ("module_kwargs", "datamodule_kwargs", "trainer_kwargs", "strategy_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise SpecError(doc, name, f"is a {type(getattr(self, name)).__name__}", "pass a dict")
            check_json_value(doc, name, getattr(self, name))
        if self.strategy not in STRATEGIES:
            raise SpecError(doc, "strategy", f"is {self.strategy!r}", f"use one of {sorted(STRATEGIES)}")
        for reserved in ("strategy", "callbacks", "plugins"):
            if reserved in self.trainer_kwargs:
                raise SpecError(
                    doc,
                    f"trainer_kwargs.{reserved}",
                    "is set by the Ray loop",
                    "use LightningConfig.strategy/strategy_kwargs; write your own train_func for custom callbacks",
                )
        for count in ("max_epochs", "min_epochs", "max_steps", "min_steps"):
            value = self.trainer_kwargs.get(count)
            if isinstance(value, str) and "{{" in value:
                continue  # a template not rendered yet (the DAG file): checked again after rendering
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise SpecError(
                    doc,
                    f"trainer_kwargs.{count}",
                    f"is {value!r} ({type(value).__name__}); pl.Trainer takes a whole number",
                    "give a number; a templated value renders as text unless the DAG sets "
                    "render_template_as_native_obj=True",
                )
        checkpoint_config(self.monitor, self.mode, self.top_k)

    def checkpoint_config(self) -> dict[str, Any]:
        """``run_config["checkpoint_config"]``: ``monitor``/``mode``/``top_k`` as Ray's ``CheckpointConfig``."""
        return checkpoint_config(self.monitor, self.mode, self.top_k)

    def code_modules(self) -> list[str]:
        """The modules holding your classes: the operator's ``ship_modules``."""
        return [module_of(path) for path in (self.module, self.datamodule) if path]


def train_loop(config: dict[str, Any]) -> None:
    """The declarative per-worker loop: build the module and data module, fit with Ray's strategy, report
    and checkpoint every epoch, and resume from Ray's latest checkpoint when a retry hands one back."""

    spec = LightningConfig.from_train_loop_config(config)
    pl = import_lightning()
    worker_device("lightning")
    if spec.seed is not None:
        pl.seed_everything(spec.seed, workers=True)
    module = import_class(spec.module, "module", pl.LightningModule)(**spec.module_kwargs)
    datamodule = (
        import_class(spec.datamodule, "datamodule", pl.LightningDataModule)(**spec.datamodule_kwargs)
        if spec.datamodule
        else None
    )
    trainer = build_trainer(
        strategy=spec.strategy,
        strategy_kwargs=spec.strategy_kwargs,
        progress_every_n_steps=spec.progress_every_n_steps,
        **spec.trainer_kwargs,
    )
    fit_or_resume(lambda ckpt: trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt), "lightning", CHECKPOINT_FILE)


def checkpoint_file(checkpoint_path: str) -> str:
    """Lightning's ``.ckpt`` inside a Ray checkpoint directory (the ``checkpoint_path`` in XCom); a path
    that already names a ``.ckpt`` file is returned as it is."""
    if checkpoint_path.endswith(".ckpt"):
        return checkpoint_path
    return f"{checkpoint_path.rstrip('/')}/{CHECKPOINT_FILE}"


def load_module(module_class: str | type, checkpoint_path: str, **kwargs: Any) -> Any:
    """Load a ``LightningModule`` from the checkpoint a downstream task gets from XCom, on the CPU."""
    pl = import_lightning()
    cls: Any = (
        import_class(module_class, "module", pl.LightningModule) if isinstance(module_class, str) else module_class
    )
    kwargs.setdefault("map_location", "cpu")
    model = cls.load_from_checkpoint(checkpoint_file(checkpoint_path), **kwargs)
    model.eval()
    return model
