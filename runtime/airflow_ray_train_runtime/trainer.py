"""The job driver: ``TrainSpec`` -> ``TorchTrainer.fit()`` -> ``ResultManifest``, printed in the job log and
written next to the run.

Runs on the Ray cluster (``python -m airflow_ray_train_runtime SPEC``). Never imports Airflow. The manifest is
printed before anything else is written (the metrics history CSV, the learning curve, the MLflow run's
artifacts and registered model): Ray kills a stopped job's driver 3 s after its SIGTERM, and a storage or a
tracking server that fails must not cost Airflow the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from airflow_ray_train_runtime.checkpoints import resolve_checkpoints
from airflow_ray_train_runtime.cluster_support import check_cluster, scaling_config_kwargs
from airflow_ray_train_runtime.frameworks import import_function
from airflow_ray_train_runtime.learning_curve import learning_curve_png
from airflow_ray_train_runtime.reports import history_csv, make_recorder, make_report_callback, read_reports
from airflow_ray_train_runtime.spec import (
    MANIFEST_MARKER,
    RUNTIME_VERSION,
    JobStatus,
    ResultManifest,
    SpecError,
    TrainSpec,
    quote_log_line,
    shipped_dir,
)
from airflow_ray_train_runtime.storage import MANIFEST_DIR, Storage, job_folder
from airflow_ray_train_runtime.tracking import RunTracker
from airflow_ray_train_runtime.usage import make_group_callback, series_usage, try_usage

PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"
#: How the Jobs API's supervisor hands its driver the job's config (runtime_env included); ``ray.init()`` reads it.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
TRACEBACK_TAIL_CHARS = 4000
#: Worker-group start attempts after the first (each waits ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, 60 s by
#: default) before the run fails, unless the spec sets ``failure_config.controller_failure_limit``.
DEFAULT_CONTROLLER_FAILURE_LIMIT = 2
#: Seconds to read the report history: after a stop, Ray kills the driver 3 s after its SIGTERM.
REPORTS_TIMEOUT_S = 30.0
REPORTS_TIMEOUT_STOPPING_S = 1.0
REPORTS_TIMEOUT_GRACEFUL_S = 5.0
HISTORY_FILE = "metrics_history.csv"
#: In the run's ``MANIFEST_DIR``: the run's training finished (see ``TrainedRun``).
TRAINED_FILE = "trained.json"
CURVE_FILE = "learning_curve.png"


class TrainFuncImportError(ImportError):
    """``train_func`` could not be imported on the cluster."""


def load_train_func(path: str) -> Callable[..., Any]:
    """Import ``package.module:function`` and return the function (a plain function, not from the standard
    library: ``train_func`` may come from run conf, and Ray calls it with the config)."""
    return import_function(
        path,
        "train_func",
        error=TrainFuncImportError,
        fix="let the operator ship your code (ship_code=True, the default) from where Airflow imports it, "
        "or install the module in the cluster's image.",
    )


class JobStopped(KeyboardInterrupt):
    """Raised in the driver when Ray stops the job (SIGTERM) during ``fit()``, so the manifest still gets out.

    A ``KeyboardInterrupt``: a blocking ``ray.get`` (``trainer.fit()`` waits in one) checks for signals and gives
    up its wait only when the handler raises that; any other exception leaves it waiting until Ray's SIGKILL,
    3 s later, and the manifest is lost. What ``ray.get`` raises then is a plain ``KeyboardInterrupt``, which
    ``run()`` still counts as a stop because the handler saw the signal."""


class StopSignal:
    """SIGTERM while fitting raises ``JobStopped``; once the fit is over it only sets ``requested``, so the
    driver prints its manifest and skips the slow artifacts instead of dying half way.

    With a grace period (``TrainSpec.stop_grace_period_s``, see ``runtime.stop``) the first SIGTERM raises
    nothing: a thread raises the recorder's stop flag and, when the training loop takes part, waits up to the
    grace period for ``fit()`` to end on its own (the loop saved a checkpoint and returned); then, or at once
    for a loop that does not take part, it signals this thread again, and that raises ``JobStopped``."""

    def __init__(self, grace_period_s: float = 0.0) -> None:
        self.requested = False
        self.raising = True
        self.grace_period_s = grace_period_s
        #: The loop was asked to stop and takes part: it ends at its next step, with a checkpoint.
        self.graceful = False
        #: The run's report recorder (``make_recorder``), once there is one: it carries the stop flag.
        self.recorder: Any = None
        self._previous: Any = None

    def __enter__(self) -> StopSignal:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def take_back(self) -> None:
        """Install the handler again: ``ray.init()`` replaces it with its own (``sys.exit``)."""
        signal.signal(signal.SIGTERM, self._handle)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        first = not self.requested
        self.requested = True
        if not self.raising:
            return
        if first and self.grace_period_s > 0 and self.recorder is not None:
            threading.Thread(target=self._ask_the_loop, name="graceful-stop", daemon=True).start()
            return
        raise JobStopped(f"the Ray job was stopped (signal {signum})")

    def _ask_the_loop(self) -> None:
        import ray

        try:
            taking_part = bool(ray.get(self.recorder.request_stop.remote(), timeout=5))
        except Exception as exc:  # noqa: BLE001 - then the job stops as without a grace period
            print(f"[airflow-ray-train] could not ask the training to stop: {exc!r}", file=sys.stderr, flush=True)
            taking_part = False
        if taking_part:
            self.graceful = True
            print(
                "[airflow-ray-train] stop requested: the training saves a checkpoint at its next step and ends "
                f"(grace period {self.grace_period_s:g} s)",
                flush=True,
            )
            until = time.monotonic() + self.grace_period_s
            while self.raising and time.monotonic() < until:
                time.sleep(0.2)
            if self.raising:
                print(
                    f"[airflow-ray-train] the training did not end within the grace period "
                    f"({self.grace_period_s:g} s): stopping it now",
                    flush=True,
                )
        if self.raising:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)


@dataclass(frozen=True)
class RunPaths:
    """Where a job's files go: ``<storage>/<run>/airflow_ray_train/<submission_id>/``."""

    storage: Storage
    storage_path: str
    run_name: str
    folder: str

    @classmethod
    def of(cls, spec: TrainSpec, default_storage_path: str) -> RunPaths:
        storage_path = os.path.expanduser(spec.run_config.get("storage_path") or default_storage_path)
        run_name = spec.effective_run_name
        return cls(Storage(storage_path), storage_path, run_name, job_folder(run_name, spec.submission_id))

    @property
    def run_path(self) -> str:
        return self.storage.join(self.run_name)

    def file(self, name: str) -> str:
        return f"{self.folder}/{name}"


@dataclass
class FitOutcome:
    """What ``fit()`` left: Ray's ``Result`` (None when it raised), the report recorder, the status, the error."""

    status: str = JobStatus.SUCCEEDED
    error: dict[str, str] | None = None
    result: Any = None
    recorder: Any = None
    #: When ``fit()`` was called and when it returned or raised (the Train run's time).
    fit_started: float | None = None
    fit_ended: float | None = None


def _error_dict(exc: BaseException) -> dict[str, str]:
    # Ray wraps worker errors (WorkerGroupError); the root cause is what the user needs to see first.
    root: BaseException = exc
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        root = next(iter(failures.values()))
    # Ray 2.52 hands the worker's exception over wrapped (UserExceptionWithTraceback: the exception and
    # its traceback as text); the user's own exception is what they raised.
    worker_traceback = getattr(root, "_traceback_str", None)
    base = getattr(root, "_base_exc", None)
    if isinstance(base, BaseException):
        root = base
    if isinstance(worker_traceback, str) and worker_traceback and root.__traceback__ is None:
        tb = worker_traceback
    else:
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


def keep_spec_package_from_workers(spec: TrainSpec, environ: dict[str, str] | None = None) -> str | None:
    """Take the spec's own package out of the ``py_modules`` this driver hands ``ray.init()``; returns its URI,
    or None when there is nothing to take out.

    The hook ships the spec (and any credentials) in a package of its own, new for every job, beside the code
    packages that the cluster already holds. Only this driver reads it, and it has by now. Left in the job's
    ``runtime_env``, every process of the run (Train's controller, its workers, the report recorder) would
    start in a runtime env the cluster has never set up, one per job; without it they get the code packages'
    env, set up once. The spec's folder is the one Ray unpacked its package into: the URI's file name without
    ``.zip``. Any other layout leaves the config as it is."""
    env = os.environ if environ is None else environ
    folder = shipped_dir(spec.shipped_file)
    if not env.get(JOB_CONFIG_ENV) or folder is None:
        return None
    config = json.loads(env[JOB_CONFIG_ENV])
    runtime_env = config.get("runtime_env") or {}
    modules = runtime_env.get("py_modules") or []
    name = os.path.basename(os.path.normpath(folder))
    ours = [m for m in modules if isinstance(m, str) and m.rsplit("/", 1)[-1] == f"{name}.zip"]
    if len(ours) != 1:
        return None
    runtime_env["py_modules"] = [m for m in modules if m != ours[0]]
    env[JOB_CONFIG_ENV] = json.dumps(config)
    return ours[0]


def fit(spec: TrainSpec, paths: RunPaths, stop: StopSignal, tracker: RunTracker | None = None) -> FitOutcome:
    """Build the ``TorchTrainer`` the spec describes and fit it, tracked by ``tracker`` when one is given; every
    failure (MLflow missing or unreachable when tracking is required, too) becomes the outcome's error."""
    import ray

    outcome = FitOutcome()
    # Train V2 routes a worker's print() to its logger and also to stdout: every progress line would reach the
    # job log twice. Ray propagates this variable from the driver to the controller and the workers.
    os.environ.setdefault(PRINT_PATCH_ENV, "0")
    try:
        check_cluster()
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        if not ray.is_initialized():
            keep_spec_package_from_workers(spec)
            ray.init(log_to_driver=True)
        stop.take_back()
        outcome.recorder = stop.recorder = make_recorder()
        train_func = load_train_func(spec.train_func)
        callbacks = [make_report_callback(outcome.recorder)]
        groups = make_group_callback(outcome.recorder)
        if groups is not None:
            callbacks.append(groups)
        if tracker is not None:
            tracker.start()
            if tracker.active:
                callbacks.append(tracker.callback())
        rc = dict(spec.run_config)
        run_config = RunConfig(
            name=paths.run_name,
            storage_path=paths.storage_path,
            checkpoint_config=CheckpointConfig(**(rc.get("checkpoint_config") or {})),
            failure_config=FailureConfig(**failure_config_kwargs(rc.get("failure_config"))),
            worker_runtime_env=rc.get("worker_runtime_env"),  # type: ignore[call-arg]
            callbacks=callbacks,
        )
        trainer = TorchTrainer(
            train_loop_per_worker=train_func,
            train_loop_config=spec.train_loop_config,
            scaling_config=ScalingConfig(**scaling_config_kwargs(spec.scaling_config)),
            run_config=run_config,
        )
        print(
            f"[airflow-ray-train] run {paths.run_name!r} in {paths.storage_path} with {spec.scaling_config}", flush=True
        )
        outcome.fit_started = time.time()
        outcome.result = trainer.fit()
        if getattr(outcome.result, "error", None) is not None:
            outcome.status, outcome.error = JobStatus.FAILED, _error_dict(outcome.result.error)
    except JobStopped as exc:
        outcome.status, outcome.error = JobStatus.STOPPED, _error_dict(exc)
    except BaseException as exc:  # noqa: BLE001 - every failure must still leave a manifest
        outcome.status, outcome.error = JobStatus.FAILED, _error_dict(exc)
    outcome.fit_ended = time.time()
    return outcome


class QuotedStream:
    """A text stream that hands what is written to ``unquoted``, every line through ``quote_log_line``. The start of
    each write counts as a line's start too: stdout and stderr land in one job log, buffered apart, so what one of
    them wrote last says nothing of where the other's next write lands."""

    def __init__(self, unquoted: TextIO) -> None:
        self.unquoted = unquoted

    def write(self, text: str) -> int:
        lines = text.split("\n")
        self.unquoted.write("\n".join(quote_log_line(line) for line in lines))
        return len(text)

    def flush(self) -> None:
        self.unquoted.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unquoted, name)


@contextlib.contextmanager
def quoted_output() -> Iterator[None]:
    """While in it, nothing printed in this process (the driver's error and traceback, the paths it names, the
    tracker's messages, a worker's forwarded log) starts a line the way a manifest does: Airflow reads the last
    manifest line of the log, and what comes after the real one must never take its place."""
    if isinstance(sys.stdout, QuotedStream) and isinstance(sys.stderr, QuotedStream):
        yield
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = QuotedStream(out), QuotedStream(err)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def publish(manifest: ResultManifest, paths: RunPaths) -> None:
    """Print the manifest in the job log (Airflow reads the last one printed), then write it to storage."""
    stdout = sys.stdout.unquoted if isinstance(sys.stdout, QuotedStream) else sys.stdout
    print(MANIFEST_MARKER + manifest.to_json(), file=stdout, flush=True)
    with quoted_output():
        try:
            paths.storage.write_text(paths.file("manifest.json"), manifest.to_json())
        except Exception as exc:  # noqa: BLE001 - the printed manifest still reaches Airflow
            print(
                f"[airflow-ray-train] could not write the manifest to {manifest.manifest_path}: {exc!r}",
                file=sys.stderr,
            )


def render_artifacts(reports: list[dict[str, Any]], run_name: str) -> dict[str, bytes]:
    """The metrics history CSV and the learning curve PNG (left out when there is nothing to plot or the
    plot fails), by file name."""
    if not reports:
        return {}
    artifacts = {HISTORY_FILE: history_csv(reports).encode()}
    try:
        png = learning_curve_png(reports, run_name)
    except Exception as exc:  # noqa: BLE001 - a plot must never cost the manifest
        print(f"[airflow-ray-train] could not plot the learning curve: {exc!r}", file=sys.stderr)
        png = None
    if png is not None:
        artifacts[CURVE_FILE] = png
    return artifacts


def write_artifacts(artifacts: dict[str, bytes], paths: RunPaths) -> tuple[str | None, str | None]:
    """Write the history and the curve next to the run; their paths, None where nothing was written."""
    written: dict[str, str] = {}
    for name, data in artifacts.items():
        try:
            written[name] = paths.storage.write_bytes(paths.file(name), data)
        except Exception as exc:  # noqa: BLE001 - an artifact must never cost the manifest
            print(f"[airflow-ray-train] could not write {name}: {exc!r}", file=sys.stderr)
    if CURVE_FILE in written:
        print(f"[airflow-ray-train] learning curve: {written[CURVE_FILE]}", flush=True)
    return written.get(HISTORY_FILE), written.get(CURVE_FILE)


@dataclass(frozen=True)
class TrainedRun:
    """A Train run whose training finished: the manifest of the job that trained it and that job's reports,
    kept at ``TRAINED_FILE`` in the run's folder. A later job of the run (a retry after the registration, the
    result's collection or the head failed) takes its result from here instead of training again."""

    manifest: ResultManifest
    reports: list[dict[str, Any]]
    first_step: int = 0

    @classmethod
    def read(cls, paths: RunPaths) -> TrainedRun | None:
        """The run's finished training, or None (none, or a record that cannot be read: the job then trains)."""
        try:
            text = paths.storage.read_text(f"{paths.run_name}/{MANIFEST_DIR}/{TRAINED_FILE}")
            if text is None:
                return None
            data = json.loads(text)
            return cls(ResultManifest.from_dict(data["manifest"]), list(data["reports"]), int(data["first_step"]))
        except Exception as exc:  # noqa: BLE001 - an unreadable record must not cost the run its manifest
            print(f"[airflow-ray-train] could not read the finished training's record: {exc!r}", file=sys.stderr)
            return None

    def write(self, paths: RunPaths) -> None:
        document = {"manifest": self.manifest.to_dict(), "reports": self.reports, "first_step": self.first_step}
        try:
            paths.storage.write_text(f"{paths.run_name}/{MANIFEST_DIR}/{TRAINED_FILE}", json.dumps(document))
        except Exception as exc:  # noqa: BLE001 - a retry then trains again, as without this file
            print(f"[airflow-ray-train] could not record the finished training: {exc!r}", file=sys.stderr)


def collect_trained(
    spec: TrainSpec, paths: RunPaths, tracker: RunTracker | None, trained: TrainedRun, started: float
) -> ResultManifest:
    """The result of a run that an earlier job already trained to the end, under this job's id: its
    checkpoints and metrics, registered (once: the registration finds a version made before) when asked."""
    earlier = trained.manifest
    print(
        f"[airflow-ray-train] run {paths.run_name!r} finished training in job {earlier.submission_id}: "
        "not training it again; collecting its result",
        flush=True,
    )
    manifest = dataclasses.replace(
        earlier,
        submission_id=spec.submission_id,
        manifest_path=paths.storage.join(paths.file("manifest.json")),
        started_at=started,
        finished_at=time.time(),
        mlflow_run_id=spec.tracking.run_id if spec.tracking else None,
        mlflow_run_url=spec.tracking.run_url if spec.tracking else None,
        model_version=None,
        usage=_collected_usage(spec, paths),
    )
    if tracker is not None:
        try:
            tracker.start()
        except Exception as exc:  # noqa: BLE001 - a required server that cannot be reached fails the job
            manifest = dataclasses.replace(manifest, status=JobStatus.FAILED, error=_error_dict(exc))
        tracker.first_step = trained.first_step
        manifest = dataclasses.replace(manifest, mlflow_warning=tracker.warning)
    publish(manifest, paths)
    if tracker is None or not manifest.succeeded:
        return manifest
    with quoted_output():
        final = tracker.finish(manifest, {}, trained.reports)
        if final != manifest:
            publish(final, paths)
    return final


def _collected_usage(spec: TrainSpec, paths: RunPaths) -> dict[str, Any]:
    """A job that only collects a finished training trains nothing; its run's sum is the earlier jobs'."""
    this = try_usage([], None, time.time(), spec.scaling_config, spec.submission_id)
    return {"try": this, "series": series_usage([*earlier_usage(paths, spec.submission_id), this])}


def run(spec: TrainSpec) -> ResultManifest:
    """Fit the trainer the spec describes, print and write its manifest, then its artifacts (skipped when the
    job is being stopped). A run that an earlier job trained to the end is collected, not trained again.
    Never raises for a training failure."""
    import ray
    from ray.train.constants import DEFAULT_STORAGE_PATH

    started = time.time()
    paths = RunPaths.of(spec, DEFAULT_STORAGE_PATH)
    tracker = RunTracker.of(spec)
    trained = TrainedRun.read(paths)
    if trained is not None:
        return collect_trained(spec, paths, tracker, trained, started)
    with StopSignal(spec.stop_grace_period_s) as stop:
        outcome = fit(spec, paths, stop, tracker)
        stop.raising = False
        _count_as_stopped(stop, outcome)
        stopping = stop.requested or outcome.status == JobStatus.STOPPED
        hard_stop = stopping and not stop.graceful
        reports = (
            read_reports(outcome.recorder, _reports_timeout(stopping, stop.graceful))
            if outcome.recorder is not None
            else []
        )
        checkpoints = resolve_checkpoints(spec, outcome.result, reports)
        usage = job_usage(spec, paths, outcome, _reports_timeout(stopping, stop.graceful), series=not hard_stop)
        manifest = ResultManifest(
            status=outcome.status,
            submission_id=spec.submission_id,
            run_name=paths.run_name,
            run_path=checkpoints.run_path or paths.run_path,
            manifest_path=paths.storage.join(paths.file("manifest.json")),
            checkpoint_path=checkpoints.latest,
            best_checkpoint_path=checkpoints.best,
            best_checkpoints=checkpoints.kept,
            metrics=reports[-1]["metrics"] if reports else {},
            num_reports=len(reports),
            error=outcome.error,
            started_at=started,
            finished_at=time.time(),
            ray_version=ray.__version__,
            runtime_version=RUNTIME_VERSION,
            mlflow_run_id=spec.tracking.run_id if spec.tracking else None,
            mlflow_run_url=spec.tracking.run_url if spec.tracking else None,
            mlflow_warning=tracker.warning if tracker else None,
            usage=usage,
        )
        publish(manifest, paths)
        with quoted_output():
            return _after_the_manifest(manifest, paths, tracker, reports, stop, stopping)


def _count_as_stopped(stop: StopSignal, outcome: FitOutcome) -> None:
    """A fit that ended while its job was being stopped is STOPPED, whether the loop returned (it took part in a
    graceful stop: it saved a checkpoint at its next step) or failed (Ray's blocking calls may turn the signal
    handler's exception into one of their own)."""
    if not stop.requested or outcome.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        return
    if outcome.status == JobStatus.SUCCEEDED:
        why = "the Ray job was stopped; its training saved a checkpoint at its next step and ended (graceful stop)"
    else:
        why = "the Ray job was stopped (SIGTERM)"
    outcome.status, outcome.error = JobStatus.STOPPED, _error_dict(JobStopped(why))


def job_usage(spec: TrainSpec, paths: RunPaths, outcome: FitOutcome, timeout: float, series: bool) -> dict[str, Any]:
    """This job's ``usage`` (see ``runtime.usage``) and, unless the job is being killed (no time for storage),
    the sum over the jobs of this Train run whose manifests are in its storage."""
    events = read_reports(outcome.recorder, timeout, "group_events") if outcome.recorder is not None else []
    run_end = outcome.fit_ended or time.time()
    this = try_usage(events, outcome.fit_started, run_end, spec.scaling_config, spec.submission_id)
    return (
        {"try": this, "series": series_usage([*earlier_usage(paths, spec.submission_id), this])}
        if series
        else {"try": this}
    )


def earlier_usage(paths: RunPaths, submission_id: str) -> list[dict[str, Any]]:
    """The ``usage["try"]`` of every other job of this Train run whose manifest is in storage, oldest first."""
    folder = f"{paths.run_name}/{MANIFEST_DIR}"
    tries = []
    try:
        names = [name for name in paths.storage.list_dir(folder) if name != submission_id]
    except Exception as exc:  # noqa: BLE001 - the sum is left to this job alone, said so
        print(f"[airflow-ray-train] could not list the earlier jobs of the run: {exc!r}", file=sys.stderr)
        names = []
    for name in names:
        try:
            text = paths.storage.read_text(f"{folder}/{name}/manifest.json")
            usage = (json.loads(text).get("usage") or {}).get("try") if text else None
        except Exception:  # noqa: BLE001 - not a job's folder, or a manifest that cannot be read
            continue
        if isinstance(usage, dict):
            tries.append(usage)
    return sorted(tries, key=lambda u: min((g["start"] for g in u.get("worker_groups") or []), default=0.0))


def _reports_timeout(stopping: bool, graceful: bool) -> float:
    """Seconds to read the report history: a stopped job is SIGKILLed 3 s after its SIGTERM, a gracefully
    stopped one has its wrap-up time (``runtime.stop.WRAP_UP_S``) first."""
    if not stopping:
        return REPORTS_TIMEOUT_S
    return REPORTS_TIMEOUT_GRACEFUL_S if graceful else REPORTS_TIMEOUT_STOPPING_S


def _after_the_manifest(
    manifest: ResultManifest,
    paths: RunPaths,
    tracker: RunTracker | None,
    reports: list[dict[str, Any]],
    stop: StopSignal,
    stopping: bool,
) -> ResultManifest:
    """The slow part after the manifest is out (skipped when stopping): the history and the curve, the record
    of a finished training, the MLflow run's end; the manifest again if they changed it."""
    if stopping:
        if tracker is not None:
            tracker.end_stopped()
        return manifest
    artifacts = render_artifacts(reports, paths.run_name)
    history, curve = write_artifacts(artifacts, paths)
    final = dataclasses.replace(manifest, metrics_history_path=history, learning_curve_path=curve)
    if final.succeeded:
        TrainedRun(final, reports, tracker.first_step if tracker else 0).write(paths)
    if tracker is not None:
        final = tracker.finish(final, artifacts, reports)
    if final != manifest and not stop.requested:
        manifest = final
        publish(manifest, paths)
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m airflow_ray_train_runtime SPEC  (b64:..., inline JSON, or a JSON file)", file=sys.stderr
        )
        return 2
    try:
        spec = TrainSpec.from_arg(args[0])
    except (SpecError, OSError, ValueError) as exc:
        print(f"[airflow-ray-train] {exc}", file=sys.stderr)
        return 2
    manifest = run(spec)
    print_outcome(manifest)
    return 0 if manifest.succeeded else 1


def print_outcome(manifest: ResultManifest) -> None:
    """The driver's last lines: how the run ended, its error and traceback, where the manifest is."""
    with quoted_output():
        if manifest.error:
            print(f"[airflow-ray-train] {manifest.status}: {manifest.error['message']}", file=sys.stderr)
            print(manifest.error["traceback"], file=sys.stderr, flush=True)
        print(f"[airflow-ray-train] {manifest.status}; manifest at {manifest.manifest_path}", flush=True)
