"""The job driver: ``TrainSpec`` -> ``TorchTrainer.fit()`` -> ``ResultManifest`` written next to the run.

Runs on the Ray cluster (``python -m airflow_ray_train.runtime SPEC``). Never imports Airflow.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from airflow_ray_train.runtime.frameworks import import_object
from airflow_ray_train.runtime.spec import MANIFEST_MARKER, CheckpointRecord, ResultManifest, SpecError, TrainSpec

#: Each ``ray.train.report`` is echoed in the job log behind this prefix, so a person can follow training.
REPORT_PREFIX = "[airflow-ray-train] report"
MANIFEST_DIR = "airflow_ray_train"
PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"
TRACEBACK_TAIL_CHARS = 4000
#: Worker-group start attempts after the first (each waits ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, 60 s by
#: default) before the run fails, unless the spec sets ``failure_config.controller_failure_limit``.
DEFAULT_CONTROLLER_FAILURE_LIMIT = 2

_SCHEMES = {"local": "", "s3": "s3", "gcs": "gs", "hdfs": "hdfs", "abfs": "abfs"}
#: Reported numbers that are bookkeeping, not a learning curve (Ray's, Lightning's and Trainer's).
_NOT_CURVES = {"epoch", "step", "start_epoch", "learning_rate", "grad_norm", "total_flos"}
_NOT_CURVE_SUFFIXES = ("_step", "_runtime", "_per_second", "_time", "_timestamp")
_SCORE_WORDS = ("acc", "f1", "auc", "precision", "recall", "score", "iou", "map", "bleu", "rouge")


class TrainFuncImportError(ImportError):
    """``train_func`` could not be imported on the cluster."""


class JobStopped(BaseException):
    """Raised in the driver when Ray stops the job (SIGTERM), so the manifest still gets written."""


def load_train_func(path: str) -> Callable[..., Any]:
    """Import ``package.module:function`` and return the function."""
    target = import_object(
        path,
        "train_func",
        error=TrainFuncImportError,
        fix="let the operator ship your code (ship_code=True, the default) from where Airflow imports it, "
        "or install the module in the cluster's image.",
    )
    if not callable(target):
        raise TrainFuncImportError(f"train_func {path!r} is a {type(target).__name__}, not a function.")
    return target  # type: ignore[no-any-return]


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


def json_safe(value: Any) -> Any:
    """Metrics as JSON: numpy/torch scalars become numbers, NaN/inf become None, anything else a string."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return json_safe(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


class Storage:
    """Writes small files into the run's storage: a local/shared path or a ``pyarrow.fs`` URI."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.is_uri = "://" in root and not root.startswith("file://")
        self._fs: Any = None
        self._fs_root = root.removeprefix("file://")
        if self.is_uri:
            import pyarrow.fs

            self._fs, self._fs_root = pyarrow.fs.FileSystem.from_uri(root)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def write_text(self, relative: str, text: str) -> str:
        return self.write_bytes(relative, text.encode())

    def write_bytes(self, relative: str, data: bytes) -> str:
        """Write then rename, so a reader never sees half a file. Returns the file's path or URI."""
        target = "/".join([self._fs_root.rstrip("/"), relative])
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


def _make_recorder_actor() -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    class ReportRecorder:
        """Holds every report; lives beside the driver so the controller's callback can hand them over."""

        def __init__(self) -> None:
            self.reports: list[dict[str, Any]] = []

        def record(self, report: dict[str, Any]) -> int:
            self.reports.append(report)
            return len(self.reports)

        def get(self) -> list[dict[str, Any]]:
            return self.reports

    # Pinned to the driver's node: anywhere else, losing that node would fail the run even where Ray Train
    # restarts its workers from the latest checkpoint.
    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ReportRecorder.options(scheduling_strategy=driver_node).remote()  # type: ignore[attr-defined]


def _make_report_callback(recorder: Any) -> Any:
    import ray
    from ray.train import UserCallback

    class RecordReports(UserCallback):
        """Sees every ``ray.train.report`` (``Result.metrics`` keeps only the last checkpointed one)."""

        def __init__(self, handle: Any) -> None:
            self.recorder = handle

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            rank0 = json_safe(metrics[0]) if metrics else {}
            path = uri_for(checkpoint.filesystem, checkpoint.path) if checkpoint is not None else None
            report = {"time": time.time(), "metrics": rank0, "checkpoint_path": path}
            index = ray.get(self.recorder.record.remote(report))
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in rank0.items())
            suffix = f" checkpoint={path}" if path else ""
            print(f"{REPORT_PREFIX} {index}: {shown}{suffix}", flush=True)

    return RecordReports(recorder)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _history_csv(reports: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for report in reports:
        columns.extend(k for k in report["metrics"] if k not in columns)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["report", "time", *columns, "checkpoint_path"])
    for index, report in enumerate(reports, 1):
        metrics = report["metrics"]
        row = [json.dumps(metrics[c]) if isinstance(metrics.get(c), (dict, list)) else metrics.get(c) for c in columns]
        writer.writerow([index, f"{report['time']:.3f}", *row, report.get("checkpoint_path") or ""])
    return out.getvalue()


def _numeric_columns(reports: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for report in reports:
        for key, value in report["metrics"].items():
            if key not in columns and _is_number(value):
                columns.append(key)
    return columns


def learning_curve_panels(reports: list[dict[str, Any]]) -> tuple[str, list[tuple[str, list[str]]]]:
    """What the learning curve shows: the x axis (``epoch`` when every report has one, else the report
    number) and the panels (losses; scores such as accuracy; else the other metrics), each with its metrics."""
    columns = _numeric_columns(reports)
    has_epoch = bool(reports) and all(isinstance(r["metrics"].get("epoch"), (int, float)) for r in reports)
    x_axis = "epoch" if has_epoch else "report"
    plotted = [c for c in columns if c not in _NOT_CURVES and not c.endswith(_NOT_CURVE_SUFFIXES)]
    losses = [c for c in plotted if "loss" in c.lower()]
    scores = [c for c in plotted if c not in losses and any(word in c.lower() for word in _SCORE_WORDS)]
    panels = [(title, names) for title, names in (("loss", losses), ("score", scores)) if names]
    if not panels and plotted:
        panels = [("metrics", plotted[:8])]
    return x_axis, panels


def learning_curve_png(reports: list[dict[str, Any]], title: str) -> bytes | None:
    """The learning curve as a PNG, or None when there is nothing to plot or matplotlib is missing."""
    x_axis, panels = learning_curve_panels(reports)
    if not panels:
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print(
            "[airflow-ray-train] matplotlib is not installed on the cluster: no learning-curve plot "
            "(the metrics history CSV is written). Fix: pip install matplotlib",
            flush=True,
        )
        return None
    xs = [r["metrics"]["epoch"] if x_axis == "epoch" else i for i, r in enumerate(reports, 1)]
    figure = Figure(figsize=(5.5 * len(panels), 4), layout="tight")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, names) in zip(axes, panels, strict=True):
        for name in names:
            points = [(x, r["metrics"][name]) for x, r in zip(xs, reports, strict=True) if name in r["metrics"]]
            points = [(x, y) for x, y in points if _is_number(y)]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xlabel(x_axis)
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title, fontsize=10)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _error_dict(exc: BaseException) -> dict[str, str]:
    # Ray wraps worker errors (WorkerGroupError); the root cause is what the user needs to see first.
    root: BaseException = exc
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        root = next(iter(failures.values()))
    tb = "".join(traceback.format_exception(type(root), root, root.__traceback__))
    message = str(root) if root is exc else f"{type(exc).__name__}: {str(root).strip()}"
    return {
        "type": type(root).__name__ if root is not exc else type(exc).__name__,
        "message": message.strip()[-2000:],
        "traceback": tb[-TRACEBACK_TAIL_CHARS:],
    }


def failure_config_kwargs(given: dict[str, Any] | None) -> dict[str, Any]:
    """``FailureConfig`` fields with the controller's retries bounded: Ray retries a worker group that cannot
    start (not enough free resources) forever by default, so a job that can never start would hang."""
    kwargs = dict(given or {})
    kwargs.setdefault("controller_failure_limit", DEFAULT_CONTROLLER_FAILURE_LIMIT)
    return kwargs


def _on_sigterm(signum: int, frame: Any) -> None:
    raise JobStopped(f"the Ray job was stopped (signal {signum})")


def run(spec: TrainSpec) -> ResultManifest:
    """Fit the trainer the spec describes and write its manifest; never raises for a training failure."""
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.constants import DEFAULT_STORAGE_PATH
    from ray.train.torch import TorchTrainer

    started = time.time()
    run_name = spec.effective_run_name
    storage_path = os.path.expanduser(spec.run_config.get("storage_path") or DEFAULT_STORAGE_PATH)
    storage = Storage(storage_path)
    run_path = storage.join(run_name)
    manifest_rel = f"{run_name}/{MANIFEST_DIR}/{spec.submission_id}/manifest.json"
    history_rel = f"{run_name}/{MANIFEST_DIR}/{spec.submission_id}/metrics_history.csv"
    curve_rel = f"{run_name}/{MANIFEST_DIR}/{spec.submission_id}/learning_curve.png"
    manifest_path = storage.join(manifest_rel)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    reports: list[dict[str, Any]] = []
    recorder: Any = None
    result: Any = None
    status, error = "SUCCEEDED", None
    # Train V2 routes a worker's print() to its logger and also to stdout: every progress line would reach the
    # job log twice. Ray propagates this variable from the driver to the controller and the workers.
    os.environ.setdefault(PRINT_PATCH_ENV, "0")
    try:
        if not ray.is_initialized():
            ray.init(log_to_driver=True)
        recorder = _make_recorder_actor()
        train_func = load_train_func(spec.train_func)
        rc = dict(spec.run_config)
        run_config = RunConfig(
            name=run_name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(**(rc.get("checkpoint_config") or {})),
            failure_config=FailureConfig(**failure_config_kwargs(rc.get("failure_config"))),
            worker_runtime_env=rc.get("worker_runtime_env"),  # type: ignore[call-arg]
            callbacks=[_make_report_callback(recorder)],
        )
        trainer = TorchTrainer(
            train_loop_per_worker=train_func,
            train_loop_config=spec.train_loop_config,
            scaling_config=ScalingConfig(**spec.scaling_config),
            run_config=run_config,
        )
        print(f"[airflow-ray-train] run {run_name!r} in {storage_path} with {spec.scaling_config}", flush=True)
        result = trainer.fit()
        if getattr(result, "error", None) is not None:
            status, error = "FAILED", _error_dict(result.error)
    except JobStopped as exc:
        status, error = "STOPPED", _error_dict(exc)
    except BaseException as exc:  # noqa: BLE001 - every failure must still leave a manifest
        status, error = "FAILED", _error_dict(exc)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if recorder is not None:
        try:
            reports = ray.get(recorder.get.remote(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - losing history must not lose the manifest
            print(f"[airflow-ray-train] could not read the report history: {exc!r}", file=sys.stderr)

    checkpoint_path = next((r["checkpoint_path"] for r in reversed(reports) if r["checkpoint_path"]), None)
    best: list[CheckpointRecord] = []
    if result is not None:
        if result.checkpoint is not None:
            checkpoint_path = uri_for(result.checkpoint.filesystem, result.checkpoint.path)
        run_path = uri_for(getattr(result, "filesystem", None), result.path) or run_path
        for ckpt, metrics in result.best_checkpoints or []:
            path = uri_for(ckpt.filesystem, ckpt.path)
            if path:
                best.append(CheckpointRecord(path=path, metrics=json_safe(metrics)))
    else:
        best = [
            CheckpointRecord(path=r["checkpoint_path"], metrics=r["metrics"]) for r in reports if r["checkpoint_path"]
        ]
        keep = (spec.run_config.get("checkpoint_config") or {}).get("num_to_keep")
        best = best[-keep:] if keep else best
    best_checkpoint_path = _best_path(spec, best) or checkpoint_path

    history_path = curve_path = None
    try:
        if reports:
            history_path = storage.write_text(history_rel, _history_csv(reports))
    except OSError as exc:
        print(f"[airflow-ray-train] could not write the metrics history: {exc!r}", file=sys.stderr)
    try:
        png = learning_curve_png(reports, run_name)
        if png is not None:
            curve_path = storage.write_bytes(curve_rel, png)
            print(f"[airflow-ray-train] learning curve: {curve_path}", flush=True)
    except Exception as exc:  # noqa: BLE001 - a plot must never cost the manifest
        print(f"[airflow-ray-train] could not write the learning curve: {exc!r}", file=sys.stderr)
    manifest = ResultManifest(
        status=status,
        submission_id=spec.submission_id,
        run_name=run_name,
        run_path=run_path,
        manifest_path=manifest_path,
        checkpoint_path=checkpoint_path,
        best_checkpoint_path=best_checkpoint_path,
        best_checkpoints=best,
        metrics=reports[-1]["metrics"] if reports else {},
        metrics_history_path=history_path,
        learning_curve_path=curve_path,
        num_reports=len(reports),
        error=error,
        started_at=started,
        finished_at=time.time(),
        ray_version=ray.__version__,
    )
    try:
        storage.write_text(manifest_rel, manifest.to_json())
    except OSError as exc:
        # The manifest still reaches Airflow through the job log (MANIFEST_MARKER).
        print(f"[airflow-ray-train] could not write the manifest to {manifest_path}: {exc!r}", file=sys.stderr)
    return manifest


def _best_path(spec: TrainSpec, best: list[CheckpointRecord]) -> str | None:
    checkpoint_config = spec.run_config.get("checkpoint_config") or {}
    attribute = checkpoint_config.get("checkpoint_score_attribute")
    if not best:
        return None
    if not attribute:
        return best[-1].path
    scored = [r for r in best if isinstance(r.metrics.get(attribute), (int, float))]
    if not scored:
        return best[-1].path
    pick = max if checkpoint_config.get("checkpoint_score_order", "max") == "max" else min
    return pick(scored, key=lambda r: r.metrics[attribute]).path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m airflow_ray_train.runtime SPEC  (b64:..., inline JSON, or a JSON file)", file=sys.stderr
        )
        return 2
    try:
        spec = TrainSpec.from_arg(args[0])
    except (SpecError, OSError, ValueError) as exc:
        print(f"[airflow-ray-train] {exc}", file=sys.stderr)
        return 2
    manifest = run(spec)
    print(MANIFEST_MARKER + manifest.to_json(), flush=True)
    if manifest.error:
        print(f"[airflow-ray-train] {manifest.status}: {manifest.error['message']}", file=sys.stderr)
        print(manifest.error["traceback"], file=sys.stderr)
    print(f"[airflow-ray-train] {manifest.status}; manifest at {manifest.manifest_path}", flush=True)
    return 0 if manifest.succeeded else 1
