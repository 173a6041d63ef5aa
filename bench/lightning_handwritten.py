"""The baseline for the throughput benchmark: the digits Lightning example as a user would write
it by hand from Ray's Lightning guide, with no airflow-ray-train runtime in the loop.

    python bench/lightning_handwritten.py --num-workers 2 --epochs 10 \\
        --data-path /tmp/digits.npz --storage-path /tmp/ray_results [--timing-dir DIR]

It fits the example's own classes (``ray_train_examples.lightning_digits``: ``DigitsClassifier``,
``DigitsDataModule``) with the example DAG's hyperparameters (lr 2e-3, hidden 64, batch 32, seed 0,
``log_every_n_steps=5``, checkpoints ranked by ``val_accuracy``, 2 kept) through ``TorchTrainer`` and Ray's
``RayDDPStrategy`` / ``RayLightningEnvironment`` / ``RayTrainReportCallback`` / ``prepare_trainer``. The
``pl.Trainer`` flags match what the runtime's ``build_trainer`` sets (no Lightning checkpointing, progress
bar or logger): the benchmark compares what the runtime adds around the same fit, not Lightning's defaults.

This file is also the benchmark's instrumentation, shared by both sides so that both are timed the same way:
:class:`ThroughputCallback` and :class:`TimedDigitsClassifier` (the example's module plus that callback,
attached through ``LightningModule.configure_callbacks``, the only way into the runtime's declarative loop,
which refuses extra ``callbacks``). The benchmark ships this file to the workers as a ``py_modules`` entry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ray_train_examples.lightning_digits import DigitsClassifier, DigitsDataModule, pl

# -- instrumentation (used by both the hand-written script and the runtime's declarative loop) ---------------

TIMING_PREFIX = "rank"


class ThroughputCallback(pl.Callback):  # type: ignore[misc]
    """Times the fit loop on every rank and writes ``<timing_dir>/rank<R>.json`` when training ends.

    - ``fit_s``: ``on_train_start`` -> ``on_train_end`` (every epoch's training steps, validation, and the
      epoch-end callbacks: ``RayTrainReportCallback``'s checkpoint save + ``ray.train.report``). Excludes the
      worker start, ``setup``, the sanity-check validation and everything after ``fit`` returns.
    - ``steps_s``: per epoch, ``on_train_epoch_start`` -> the last ``on_train_batch_end`` (data loading,
      forward, backward, DDP all-reduce, optimizer step, per-step logging and callbacks), summed.
    - ``samples``: training samples this rank processed (the batch sizes, summed).
    - ``cpu_fit_s``/``cpu_steps_s``: the same spans in this worker process's CPU time (all its threads,
      ``time.process_time``): less sensitive than wall time to other work on a shared machine.
    """

    def __init__(self, timing_dir: str) -> None:
        super().__init__()
        self.timing_dir = timing_dir
        self.samples = 0
        self.steps = 0
        self.fit_started = self.epoch_started = self.last_batch_end = 0.0
        self.cpu_fit_started = self.cpu_epoch_started = self.cpu_last_batch_end = 0.0
        self.epochs: list[dict[str, float]] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.fit_started = time.perf_counter()
        self.cpu_fit_started = time.process_time()
        self.wall_started = time.time()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.epoch_started = self.last_batch_end = time.perf_counter()
        self.cpu_epoch_started = self.cpu_last_batch_end = time.process_time()
        self.epoch_samples = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.last_batch_end = time.perf_counter()
        self.cpu_last_batch_end = time.process_time()
        size = int(batch[1].shape[0])
        self.samples += size
        self.epoch_samples += size
        self.steps += 1

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # Lightning 2 runs the epoch's validation before on_train_epoch_end: last_batch_end excludes it.
        self.epochs.append(
            {
                "steps_s": self.last_batch_end - self.epoch_started,
                "cpu_steps_s": self.cpu_last_batch_end - self.cpu_epoch_started,
                "samples": self.epoch_samples,
                "started": self.epoch_started - self.fit_started,
            }
        )

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        record = {
            "rank": int(trainer.global_rank),
            "world_size": int(trainer.world_size),
            "samples": self.samples,
            "steps": self.steps,
            "fit_s": time.perf_counter() - self.fit_started,
            "steps_s": sum(e["steps_s"] for e in self.epochs),
            "cpu_fit_s": time.process_time() - self.cpu_fit_started,
            "cpu_steps_s": sum(e["cpu_steps_s"] for e in self.epochs),
            "wall_started": self.wall_started,
            "wall_ended": time.time(),
            "epochs": self.epochs,
        }
        os.makedirs(self.timing_dir, exist_ok=True)
        path = os.path.join(self.timing_dir, f"{TIMING_PREFIX}{record['rank']}.json")
        with open(f"{path}.tmp", "w") as handle:
            json.dump(record, handle)
        os.replace(f"{path}.tmp", path)


class TimedDigitsClassifier(DigitsClassifier):
    """``DigitsClassifier`` unchanged, plus :class:`ThroughputCallback` when ``timing_dir`` is given."""

    def __init__(self, timing_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timing_dir = timing_dir

    def configure_callbacks(self) -> list[Any]:
        return [ThroughputCallback(self.timing_dir)] if self.timing_dir else []


# -- the hand-written Ray Train script ---------------------------------------------------------------------


def train_func(config: dict[str, Any]) -> None:
    """Ray's Lightning guide, applied to the digits example."""
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer

    pl.seed_everything(config["seed"], workers=True)
    model = TimedDigitsClassifier(timing_dir=config["timing_dir"], lr=config["lr"], hidden=config["hidden"])
    datamodule = DigitsDataModule(data_path=config["data_path"], batch_size=config["batch_size"])
    trainer = pl.Trainer(
        max_epochs=config["epochs"],
        log_every_n_steps=5,
        devices="auto",
        accelerator="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[RayTrainReportCallback()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        logger=False,
    )
    trainer = prepare_trainer(trainer)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        trainer.fit(model, datamodule=datamodule)
        return
    with checkpoint.as_directory() as ckpt_dir:
        trainer.fit(model, datamodule=datamodule, ckpt_path=os.path.join(ckpt_dir, "checkpoint.ckpt"))


def main(argv: list[str] | None = None) -> int:
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-path", required=True, help="the .npz written by lightning_digits.prepare_digits")
    parser.add_argument("--storage-path", required=True, help="Ray Train storage (an absolute path)")
    parser.add_argument("--name", default=f"digits-handwritten-{int(time.time())}")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-dir", default=None, help="where each rank writes its ThroughputCallback record")
    args = parser.parse_args(argv)

    trainer = TorchTrainer(
        train_func,
        train_loop_config={
            "data_path": args.data_path,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "hidden": args.hidden,
            "seed": args.seed,
            "timing_dir": args.timing_dir,
        },
        scaling_config=ScalingConfig(num_workers=args.num_workers, use_gpu=False),
        run_config=RunConfig(
            name=args.name,
            storage_path=args.storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"
            ),
        ),
    )
    result = trainer.fit()
    print(f"[handwritten] done: metrics={result.metrics} checkpoint={result.checkpoint}", flush=True)
    return 0


if __name__ == "__main__":
    # Run main() from this file imported under its module name (bench/ is sys.path[0]), so Ray pickles
    # train_func and the classes by reference and the workers import them from the shipped module, just as
    # the runtime imports its loop by path: both sides run the same code objects.
    import lightning_handwritten

    sys.exit(lightning_handwritten.main())
