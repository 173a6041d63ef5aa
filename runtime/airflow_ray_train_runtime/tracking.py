"""MLflow tracking on the cluster: the run the Airflow side made (``TrainSpec.tracking``) gets the job's params,
every ``ray.train.report`` as metrics, the metrics history and learning curve, the checkpoint location, a
registered model version, and its end status.

It needs ``mlflow`` (``mlflow-skinny`` serves) on the cluster: a tracked job without it fails at once, before
training, with the pip command. The credentials come in a file shipped beside the spec
(``TrainSpec.credentials_file``) and become the MLflow client's ``MLFLOW_TRACKING_*`` variables only inside the
processes that log: the job driver, and Ray Train's controller, where the metrics callback (which carries
them, pickled with it) runs. Nothing here fails training over an MLflow error: the callback warns once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from typing import Any

from airflow_ray_train_runtime.frameworks import require
from airflow_ray_train_runtime.reports import json_safe
from airflow_ray_train_runtime.spec import (
    MLFLOW_RUN_STATUS,
    ResultManifest,
    TrackingSpec,
    TrainSpec,
    find_shipped,
)

#: The MLflow client's credential variables the Airflow side may ship.
CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
)
#: MLflow's client retries a call 7 times over minutes by default: a report must not wait that long.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
#: Consecutive failed reports after which the callback stops trying for the rest of the job.
GIVE_UP_AFTER = 3
#: The name of a registered model's LoggedModel in the run.
MODEL_ARTIFACT = "model"
#: The tag, on a run and on each model version, naming the checkpoint it holds: how a retry finds its version.
CHECKPOINT_TAG = "airflow_ray_train.checkpoint_path"
#: The run tag naming report steps that could not be sent to the run.
MISSING_STEPS_TAG = "airflow_ray_train.missing_report_steps"
#: The LoggedModel type of a checkpoint registered as its files (a loop the user wrote).
CHECKPOINT_MODEL_TYPE = "ray-train-checkpoint"
#: The ``error.type`` of a manifest whose training succeeded and whose model could not be registered.
REGISTRATION_ERROR = "ModelRegistrationError"
#: Metric values per ``log_batch`` (MLflow's limit is 1000).
_METRICS_PER_BATCH = 1000
_PURPOSE = "MLflow tracking (the task's MLflow connection or register_model)"
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_BATCH = 100
_TAG = "[airflow-ray-train] MLflow:"
#: Each framework's distribution, and what its logged model needs installed besides torch.
_DISTRIBUTION = {"lightning": "pytorch-lightning", "transformers": "transformers"}
_FRAMEWORK_DISTRIBUTIONS = {"lightning": ("pytorch-lightning",), "transformers": ("transformers", "accelerate")}


class MlflowUnreachableError(RuntimeError):
    """The cluster cannot reach the tracking server (or it refused the run) and the task requires tracking."""


def import_mlflow() -> Any:
    """``mlflow``, or ``FrameworkNotInstalledError`` with the pip command."""
    return require("mlflow", "mlflow", _PURPOSE)


def read_credentials(spec: TrainSpec) -> dict[str, str]:
    """The credentials shipped beside the spec (none when the server needs none)."""
    text = find_shipped(spec.credentials_file)
    if text is None:
        return {}
    given = json.loads(text)
    return {key: str(given[key]) for key in CREDENTIAL_VARIABLES if key in given}


def use_credentials(credentials: dict[str, str]) -> None:
    """Make this process's MLflow client use ``credentials`` and answer within bounded retries."""
    os.environ.update(credentials)
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def metric_key(name: str) -> str:
    """A name MLflow accepts as a metric or param key (letters, digits, ``_ - . / : `` and space)."""
    return _BAD_KEY_CHARS.sub("_", name)[:_MAX_KEY] or "_"


def metric_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The report's numbers (bools and non-finite values left out) under keys MLflow accepts."""
    return {
        metric_key(str(key)): float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def _whole(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else None


def report_step(metrics: dict[str, Any], count: int) -> int:
    """The MLflow step of a report: its ``step`` (Lightning's and Trainer's global step), else its ``epoch``,
    else ``count``, the running number of reports (continued across resumed jobs)."""
    for key in ("step", "epoch"):
        step = _whole(metrics.get(key))
        if step is not None:
            return step
    return count


def flat_params(prefix: str, value: Any) -> dict[str, str]:
    """A config as MLflow params: nested dicts as dotted keys, other values as JSON, cut to MLflow's limit."""
    if isinstance(value, dict) and value:
        params: dict[str, str] = {}
        for key, item in value.items():
            params.update(flat_params(f"{prefix}.{key}", item))
        return params
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return {metric_key(prefix): text[:_MAX_PARAM_VALUE]}


def framework_of(train_func: str) -> str:
    """``lightning`` or ``transformers`` for the declarative loops, else ``torch``."""
    from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP
    from airflow_ray_train_runtime.transformers import TRANSFORMERS_TRAIN_LOOP

    return {LIGHTNING_TRAIN_LOOP: "lightning", TRANSFORMERS_TRAIN_LOOP: "transformers"}.get(train_func, "torch")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirements(framework: str) -> list[str]:
    """The logged model's pip requirements, from what is installed here: given, because MLflow would else
    infer them by loading the model again in a subprocess."""
    names = ["torch", *(_FRAMEWORK_DISTRIBUTIONS.get(framework, ()))]
    return [f"{name}=={version}" for name in names if (version := _version(name))]


def run_params(spec: TrainSpec) -> dict[str, str]:
    """What a new run records once: the loop's config, the scaling, the framework and the versions."""
    framework = framework_of(spec.train_func)
    params = {"train_func": spec.train_func, "framework": framework}
    params.update(flat_params("train_loop_config", spec.train_loop_config))
    params.update(flat_params("scaling_config", spec.scaling_config))
    for name, distribution in (("ray", "ray"), ("torch", "torch"), (framework, _DISTRIBUTION.get(framework, ""))):
        version = _version(distribution) if distribution else None
        if version:
            params[f"{name}_version"] = version
    return params


def _warn(message: str) -> None:
    print(f"{_TAG} {message}", file=sys.stderr, flush=True)


def make_metrics_callback(tracking: TrackingSpec, credentials: dict[str, str], first_step: int) -> Any:
    """A ``ray.train.UserCallback`` that logs each report (rank 0's metrics) to the run, from the controller,
    with ``report_step``; the running count starts at ``first_step``. Never raises: the first failure is said
    once, and after ``GIVE_UP_AFTER`` in a row it stops trying."""
    from ray.train import UserCallback

    class LogReportsToMlflow(UserCallback):
        """Every report as MLflow metrics (``Result.metrics`` keeps only the last checkpointed one)."""

        def __init__(self) -> None:
            self.count = first_step
            self.client: Any = None
            self.failures = 0
            self.warned = False

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            rank0 = json_safe(metrics[0]) if metrics else {}
            step, self.count = report_step(rank0, self.count), self.count + 1
            if self.failures >= GIVE_UP_AFTER:
                return
            try:
                self.log(rank0, step)
            except Exception as exc:  # noqa: BLE001 - tracking must never fail training
                self.failures += 1
                if not self.warned:
                    self.warned = True
                    _warn(f"could not log a report to run {tracking.run_id} at {tracking.tracking_uri}: {exc!r}")
                if self.failures >= GIVE_UP_AFTER:
                    _warn(f"{GIVE_UP_AFTER} reports in a row failed: not logging more reports of this job")
            else:
                self.failures = 0

        def log(self, metrics: dict[str, Any], step: int) -> None:
            values = metric_values(metrics)
            if not values:
                return
            if self.client is None:
                use_credentials(credentials)
                self.client = import_mlflow().MlflowClient(tracking.tracking_uri)
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(key, value, now, step) for key, value in values.items()]
            self.client.log_batch(tracking.run_id, metrics=batch, synchronous=True)

    return LogReportsToMlflow()


@contextlib.contextmanager
def local_checkpoint(path: str) -> Iterator[str]:
    """The checkpoint as a local directory: itself on a local or shared path, else downloaded for the while."""
    import ray.train

    with ray.train.Checkpoint(path).as_directory() as directory:
        yield str(directory)


class RunTracker:
    """The driver's side of one tracked job: ``start`` before fitting, ``callback`` for the trainer,
    ``end_stopped`` or ``finish`` at the end. ``active`` is False for a run that trains untracked."""

    def __init__(self, spec: TrainSpec, tracking: TrackingSpec, credentials: dict[str, str]) -> None:
        self.spec = spec
        self.tracking = tracking
        self.credentials = credentials
        self.active = False
        self.first_step = 0
        self.client: Any = None
        #: Why the run trains untracked (the server could not be reached and tracking is not required).
        self.warning: str | None = None

    @classmethod
    def of(cls, spec: TrainSpec) -> RunTracker | None:
        return None if spec.tracking is None else cls(spec, spec.tracking, read_credentials(spec))

    def start(self) -> None:
        """Check the run answers from here, record the params of a new run, and find where a resumed run's
        report count goes on. Raises when the server cannot be reached and tracking is required."""
        mlflow = import_mlflow()
        use_credentials(self.credentials)
        mlflow.set_tracking_uri(self.tracking.tracking_uri)
        self.client = mlflow.MlflowClient(self.tracking.tracking_uri)
        try:
            run = self.client.get_run(self.tracking.run_id)
        except Exception as exc:  # said one way, whatever the client raised
            problem = (
                f"the cluster cannot reach run {self.tracking.run_id} on the MLflow tracking server at "
                f"{self.tracking.tracking_uri} ({type(exc).__name__}: {str(exc)[:500]}), though Airflow made it there"
            )
            if self.tracking.required:
                raise MlflowUnreachableError(
                    f"{problem}. Fix: let the Ray nodes reach that address (the connection's host is used on both "
                    "sides), or pass mlflow_required=False to train untracked."
                ) from exc
            lost = (
                f"; no version of {self.tracking.register_model!r} is registered"
                if self.tracking.register_model
                else ""
            )
            self.warning = f"{problem}; training untracked (mlflow_required=False){lost}"
            _warn(self.warning)
            return
        self.active = True
        if not run.data.params:
            self._log_params(run_params(self.spec))
        elif run.data.metrics:
            self.first_step = self._next_step(next(iter(run.data.metrics)))
        print(f"{_TAG} run {self.tracking.run_url or self.tracking.run_id}", flush=True)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.tracking.run_id, params=items[start : start + _BATCH], synchronous=True)

    def _next_step(self, key: str) -> int:
        """One past the highest step the run has for ``key``: a resumed job's running count goes on from there."""
        history = self.client.get_metric_history(self.tracking.run_id, key)
        return max((metric.step for metric in history), default=-1) + 1

    def callback(self) -> Any:
        return make_metrics_callback(self.tracking, self.credentials, self.first_step)

    def end_stopped(self) -> None:
        """End the run KILLED: quick, the driver has 3 s between Ray's SIGTERM and its SIGKILL."""
        if not self.active:
            return
        try:
            self.client.set_terminated(self.tracking.run_id, "KILLED")
        except Exception as exc:  # noqa: BLE001 - the Airflow side ends it when this cannot
            _warn(f"could not end run {self.tracking.run_id} as KILLED: {exc!r}")

    def finish(
        self, manifest: ResultManifest, artifacts: dict[str, bytes], reports: list[dict[str, Any]]
    ) -> ResultManifest:
        """Send the reports the run missed, log the artifacts and the checkpoint location, register the model
        when asked, and end the run. Returns the manifest with the model version, or FAILED with
        ``REGISTRATION_ERROR`` when registering failed (the training's result stays in storage for a retry)."""
        if not self.active:
            return manifest
        run_id = self.tracking.run_id
        self.send_missed_reports(reports)
        try:
            self._log_artifacts(artifacts)
            tags = {CHECKPOINT_TAG: manifest.checkpoint_path or ""}
            if manifest.best_checkpoint_path:
                tags["airflow_ray_train.best_checkpoint_path"] = manifest.best_checkpoint_path
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
        except Exception as exc:  # noqa: BLE001 - artifacts are a convenience; the run's result stands
            _warn(f"could not log the artifacts of run {run_id}: {exc!r}")
        if manifest.succeeded and self.tracking.register_model:
            try:
                version = self.register(manifest)
            except Exception as exc:  # noqa: BLE001 - the task asked for a version: without one it fails
                manifest = dataclasses.replace(
                    manifest,
                    status="FAILED",
                    error={
                        "type": REGISTRATION_ERROR,
                        "message": f"training succeeded, but registering the model "
                        f"{self.tracking.register_model!r} in MLflow failed ({type(exc).__name__}: "
                        f"{str(exc)[:1500]}). The checkpoint is kept: a retry registers it without training again.",
                        "traceback": traceback.format_exc()[-4000:],
                    },
                )
            else:
                manifest = dataclasses.replace(manifest, model_version=version)
                print(f"{_TAG} registered {self.tracking.register_model!r} version {version}", flush=True)
        try:
            self.client.set_terminated(run_id, MLFLOW_RUN_STATUS[manifest.status])
        except Exception as exc:  # noqa: BLE001 - the Airflow side ends it when this cannot
            _warn(f"could not end run {run_id}: {exc!r}")
        return manifest

    def send_missed_reports(self, reports: list[dict[str, Any]]) -> None:
        """Log what the metrics callback could not (the server was down while those reports came): every
        report of the job is compared, key by key, with the run's history and the missing values are sent
        with their own step and time. Steps that still cannot be sent are named in ``MISSING_STEPS_TAG``."""
        from mlflow.entities import Metric

        wanted = [
            Metric(key, value, int(report["time"] * 1000), report_step(report["metrics"], self.first_step + index))
            for index, report in enumerate(reports)
            for key, value in metric_values(report["metrics"]).items()
        ]
        if not wanted:
            return
        missing = wanted
        try:
            keys = sorted({metric.key for metric in wanted})
            logged = {key: {m.step for m in self.client.get_metric_history(self.tracking.run_id, key)} for key in keys}
            missing = [metric for metric in wanted if metric.step not in logged[metric.key]]
            for start in range(0, len(missing), _METRICS_PER_BATCH):
                batch = missing[start : start + _METRICS_PER_BATCH]
                self.client.log_batch(self.tracking.run_id, metrics=batch, synchronous=True)
        except Exception as exc:  # noqa: BLE001 - the run's result stands without its curves
            steps = sorted({metric.step for metric in missing})
            _warn(f"could not send the reports of steps {steps} to run {self.tracking.run_id}: {exc!r}")
            with contextlib.suppress(Exception):
                self.client.set_tag(self.tracking.run_id, MISSING_STEPS_TAG, json.dumps(steps)[:5000])
            return
        if missing:
            steps = sorted({metric.step for metric in missing})
            print(f"{_TAG} sent the reports of steps {steps} that the tracking server missed", flush=True)

    def _log_artifacts(self, artifacts: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory(prefix="airflow_ray_train_mlflow_") as folder:
            for name, data in artifacts.items():
                path = os.path.join(folder, name)
                with open(path, "wb") as handle:
                    handle.write(data)
                self.client.log_artifact(self.tracking.run_id, path)

    def register(self, manifest: ResultManifest) -> str:
        """The model version of the best checkpoint: the one this run registered before (a retry after a
        failure half way), else the checkpoint logged as a model in the run and registered as a new version,
        tagged with the metrics reported with it."""
        mlflow = import_mlflow()
        source = manifest.best_checkpoint_path or manifest.checkpoint_path
        if not source:
            raise ValueError("the run reported no checkpoint to register. Fix: pass checkpoint= to ray.train.report")
        name = str(self.tracking.register_model)
        registered = self.registered_version(name, source)
        if registered is not None:
            print(f"{_TAG} {name!r} version {registered} already holds checkpoint {source}: not registered again")
            return registered
        # The model is logged in the run; leaving the block ends it FINISHED, and ``finish`` sets its real end.
        with mlflow.start_run(run_id=self.tracking.run_id), local_checkpoint(source) as directory:
            model_uri = self._log_model(directory, source)
        metrics = next((r.metrics for r in manifest.best_checkpoints if r.path == source), manifest.metrics)
        tags = {f"metric.{key}": str(value) for key, value in metric_values(metrics).items()}
        tags[CHECKPOINT_TAG] = source
        version = mlflow.register_model(model_uri, name, tags=tags)
        return str(version.version)

    def registered_version(self, name: str, source: str) -> str | None:
        """The version of ``name`` that this run registered from checkpoint ``source``, if there is one."""
        versions = self.client.search_model_versions(f"run_id = '{self.tracking.run_id}'")
        found = [int(v.version) for v in versions if v.name == name and (v.tags or {}).get(CHECKPOINT_TAG) == source]
        return str(min(found)) if found else None

    def _log_model(self, directory: str, source: str) -> str:
        """The model's URI in MLflow once logged in the run: the declarative Lightning loop's module with
        ``mlflow.pytorch``, the declarative Transformers loop's model and tokenizer with ``mlflow.transformers``,
        else (every loop a user writes) a LoggedModel that holds the checkpoint's files as they are."""
        import mlflow

        framework = framework_of(self.spec.train_func)
        if framework == "lightning":
            import mlflow.pytorch

            from airflow_ray_train_runtime.lightning import LightningConfig, load_module

            config = LightningConfig.from_train_loop_config(self.spec.train_loop_config)
            # Pickled: MLflow's default, a traced graph, needs an input example this loop cannot know.
            model = load_module(config.module, directory)
            info = mlflow.pytorch.log_model(
                model, name=MODEL_ARTIFACT, serialization_format="pickle", pip_requirements=requirements(framework)
            )
            return str(info.model_uri)
        if framework == "transformers":
            import mlflow.transformers

            from airflow_ray_train_runtime.transformers import load_for_sequence_classification

            # Loaded, not by path: MLflow's path route reads pipeline metadata transformers 5 no longer has.
            model, tokenizer = load_for_sequence_classification(directory)
            info = mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                task="text-classification",
                name=MODEL_ARTIFACT,
                pip_requirements=requirements(framework),
            )
            return str(info.model_uri)
        return self._log_checkpoint_model(directory, source)

    def _log_checkpoint_model(self, directory: str, source: str) -> str:
        """A LoggedModel of the run whose artifacts are the checkpoint directory's files: MLflow 3 registers a
        model only from a LoggedModel, and a user's loop saves whatever its framework saves (a state_dict,
        Lightning's ``.ckpt``, a ``save_pretrained`` folder), which its own code loads back."""
        model = self.client.create_logged_model(
            self.tracking.experiment_id,
            name=MODEL_ARTIFACT,
            source_run_id=self.tracking.run_id,
            tags={CHECKPOINT_TAG: source},
            model_type=CHECKPOINT_MODEL_TYPE,
        )
        try:
            self.client.log_model_artifacts(model.model_id, directory)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        return str(self.client.finalize_logged_model(model.model_id, "READY").model_uri)
