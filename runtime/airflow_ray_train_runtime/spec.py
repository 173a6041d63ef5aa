"""The seam between Airflow and Ray: ``TrainSpec`` goes in with the job, ``ResultManifest`` comes back.

Standard library only: this module is imported on both sides, by an Airflow worker that has no ``ray``
and by a Ray job driver that has no Airflow. Both documents are versioned, reject unknown keys and say,
for every bad value, which field is wrong and how to fix it.
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import os
import re
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1
#: This runtime's version (both distributions', from the one ``VERSION`` file that ships with the package).
RUNTIME_VERSION = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "VERSION")).read().strip()
#: The distribution a cluster installs (``pip install airflow-ray-train-runtime``).
RUNTIME_DISTRIBUTION = "airflow-ray-train-runtime"


def release_line(version: str) -> str:
    """``major.minor`` of a version (``0.1.3`` -> ``0.1``): the provider and the runtime work together when
    theirs match; a patch release on either side changes neither document."""
    parts = re.match(r"(\d+)\.(\d+)", str(version))
    return f"{parts[1]}.{parts[2]}" if parts else str(version)


def runtime_version_problem(provider_side: str, cluster_side: str) -> tuple[str, str] | None:
    """Why a cluster's runtime ``cluster_side`` cannot run a job from a provider whose runtime is
    ``provider_side``, as (problem, fix) naming both versions, or None when they share ``major.minor``."""
    if release_line(provider_side) == release_line(cluster_side):
        return None
    wanted = release_line(provider_side)
    return (
        f"is {provider_side!r} (the provider's), and the cluster's {RUNTIME_DISTRIBUTION} is {cluster_side!r}: the "
        f"two speak the same spec and manifest only within one major.minor",
        f"install '{RUNTIME_DISTRIBUTION}=={wanted}.*' on every Ray node (the cluster's image), or let the provider "
        "ship its runtime with each job ([ray_train] ship_runtime = auto or always)",
    )


#: The fields of Ray 2.60's ``ray.train.ScalingConfig`` that a JSON spec can set. ``trainer_resources`` is
#: left out on purpose: Train V2 raises when it is used.
SCALING_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    # An int, or [min, max] for elastic training (JSON has no tuples; the driver hands Ray the tuple).
    "num_workers": (int, list),
    "use_gpu": (bool,),
    "resources_per_worker": (dict,),
    "placement_strategy": (str,),
    "accelerator_type": (str,),
    "label_selector": (dict,),
    "use_tpu": (bool,),
    "topology": (str,),
    "elastic_resize_monitor_interval_s": (int, float),
}
#: ``ray.train.RunConfig`` fields a spec can set; ``callbacks``/``storage_filesystem`` are not JSON, and
#: ``sync_config``, ``verbose``, ``stop``, ``progress_reporter``, ``log_to_file`` raise in Train V2.
RUN_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "storage_path": (str,),
    "checkpoint_config": (dict,),
    "failure_config": (dict,),
    "worker_runtime_env": (dict,),
}
CHECKPOINT_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "num_to_keep": (int,),
    "checkpoint_score_attribute": (str,),
    "checkpoint_score_order": (str,),
}
FAILURE_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "max_failures": (int,),
    "controller_failure_limit": (int,),
    "max_preemption_failures": (int,),
}
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
#: An MLflow experiment or run id (a number, 32 hex digits).
_MLFLOW_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobStatus(StrEnum):
    """A Ray job's status, as the Jobs API spells it; a manifest's status is one of the terminal ones."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @classmethod
    def ended(cls, status: object) -> bool:
        """The one terminal predicate: whether a status (a member, or the Jobs API's string) is one a job ends
        in. One this code does not know is not."""
        return status in TERMINAL_STATUSES


#: The statuses a job ends in; a manifest's status is one of them.
TERMINAL_STATUSES = (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)
#: The MLflow run status each way a job ends gives its run (both sides end runs with it).
MLFLOW_RUN_STATUS = {
    JobStatus.SUCCEEDED.value: "FINISHED",
    JobStatus.FAILED.value: "FAILED",
    JobStatus.STOPPED.value: "KILLED",
}

_TRAIN_FUNC_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_B64_PREFIX = "b64:"
#: The driver's argument for a spec shipped as a file in the job's ``py_modules`` (found on ``sys.path``).
_SHIPPED_PREFIX = "shipped:"
#: The job driver prints its manifest on one log line behind this marker, so the Airflow side gets it
#: through the Jobs API even where it cannot read the cluster's storage. Only a line that starts with it is a
#: manifest line; nothing else the driver prints starts with it (``quote_log_line``).
MANIFEST_MARKER = "AIRFLOW_RAY_TRAIN_MANIFEST="
#: What the driver puts before a line of its output that a log reader could take for a manifest line.
QUOTE_PREFIX = "| "
#: Control characters (newlines, carriage returns, escapes, Unicode line separators): a value holding one could
#: start a line of its own in the job log, or cut a path in two.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Colour codes at the start of a line, which log readers strip before they look for the marker.
_LEADING_COLOURS = re.compile(r"^(?:\x1b\[[0-9;]*[A-Za-z])+")
#: The most characters a user's ``run_config.name`` may have: it is combined with the provider's run name.
USER_RUN_NAME_LIMIT = 100


class SpecError(ValueError):
    """A spec or manifest value is wrong. ``field`` is the dotted path of the offending value."""

    def __init__(self, document: str, field_path: str, problem: str, fix: str) -> None:
        self.document = document
        self.field = field_path
        self.problem = problem
        self.fix = fix
        super().__init__(f"Invalid {document}: {field_path} {problem}. Fix: {fix}")


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def check_keys(document: str, prefix: str, given: dict[str, Any], allowed: dict[str, Any], what: str) -> None:
    for key in given:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), list(allowed), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(
            document,
            f"{prefix}{key}",
            f"is not a {what} field",
            f"{hint}use one of {sorted(allowed)}",
        )


def _check_types(document: str, prefix: str, given: dict[str, Any], allowed: dict[str, tuple[type, ...]]) -> None:
    for key, value in given.items():
        if value is None:
            continue
        types = allowed[key]
        # bool is an int in Python; a flag passed where a count is expected is a mistake, not a count.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise SpecError(
                document,
                f"{prefix}{key}",
                f"is {value!r} ({type(value).__name__})",
                f"pass a {_type_names(types)}",
            )


def check_json_value(document: str, path: str, value: Any) -> None:
    """Raise a ``SpecError`` naming the exact path of the first value that JSON cannot carry."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(document, path, f"is {value!r}", "use a finite number (JSON has no NaN or Infinity)")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(document, f"{path}[{key!r}]", "has a non-string key", "use string keys")
            check_json_value(document, f"{path}[{key!r}]", item)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_json_value(document, f"{path}[{index}]", item)
        return
    raise SpecError(
        document,
        path,
        f"is a {type(value).__module__}.{type(value).__qualname__}, which cannot cross to the cluster as JSON",
        "pass plain numbers, strings, lists and dicts (a path or a name) and build the object inside train_func",
    )


def _is_uri(path: str) -> bool:
    return bool(_URI_RE.match(path))


@dataclass(frozen=True)
class TrackingSpec:
    """The MLflow run a job logs to, made (or found again, for a retry) on the Airflow side before submitting.
    Credentials never travel here: they ship in a file of their own (``TrainSpec.credentials_file``).

    :param tracking_uri: the MLflow tracking server, as the cluster reaches it.
    :param experiment_id: the run's experiment.
    :param run_id: the run every report, artifact and registered version goes to.
    :param run_url: the run's page in the MLflow UI (for the job log and the manifest).
    :param register_model: register the best checkpoint as a new version of this model; None: do not.
    :param required: True: a cluster that cannot reach the server fails the job before training; False: it
        trains untracked, with a warning.
    """

    tracking_uri: str
    experiment_id: str
    run_id: str
    run_url: str | None = None
    register_model: str | None = None
    required: bool = True

    def __post_init__(self) -> None:
        doc = "TrainSpec"
        if not isinstance(self.tracking_uri, str) or not _URI_RE.match(self.tracking_uri):
            raise SpecError(
                doc,
                "tracking.tracking_uri",
                f"is {self.tracking_uri!r}",
                "give the server's URI, e.g. 'http://mlflow:5000'",
            )
        for name in ("experiment_id", "run_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _MLFLOW_ID_RE.fullmatch(value):
                raise SpecError(doc, f"tracking.{name}", f"is {value!r}", "use the id MLflow gave it")
        if self.register_model is not None and (not isinstance(self.register_model, str) or not self.register_model):
            raise SpecError(
                doc, "tracking.register_model", f"is {self.register_model!r}", "name a model, or leave None"
            )
        for name in ("tracking_uri", "run_url", "register_model"):
            value = getattr(self, name)
            if isinstance(value, str) and _CONTROL_RE.search(value):
                raise SpecError(
                    doc,
                    f"tracking.{name}",
                    f"is {value!r}, which holds a control character (a newline, a tab, an escape)",
                    "remove it: check the template or the run conf it comes from",
                )
        if not isinstance(self.required, bool):
            raise SpecError(doc, "tracking.required", f"is {self.required!r}", "use true or false")


@dataclass(frozen=True)
class TrainSpec:
    """What to run: everything the job driver needs to build and fit a ``TorchTrainer``.

    :param train_func: ``"package.module:function"``, the per-worker training loop, importable on the cluster.
    :param run_name: Ray Train run name; stable across Airflow tries so a retry resumes from its checkpoint.
    :param submission_id: the Ray job's submission id; names the manifest of this job.
    :param train_loop_config: the dict every worker's ``train_func(config)`` receives.
    :param scaling_config: ``ray.train.ScalingConfig`` fields.
    :param run_config: ``ray.train.RunConfig`` fields (``checkpoint_config``/``failure_config`` as dicts).
    :param tracking: the MLflow run to log to, or None (untracked).
    :param stop_grace_period_s: seconds a stopped job's training loop may take to save a checkpoint and end
        (see ``runtime.stop``); 0: stopped at once.
    """

    train_func: str
    run_name: str
    submission_id: str
    train_loop_config: dict[str, Any] = field(default_factory=dict)
    scaling_config: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)
    tracking: TrackingSpec | None = None
    stop_grace_period_s: float = 0.0
    #: The runtime version of the provider that wrote the spec; the cluster's runtime checks it first.
    runtime_version: str = RUNTIME_VERSION
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        doc = "TrainSpec"
        problem = runtime_version_problem(self.runtime_version, RUNTIME_VERSION)
        if problem:
            raise SpecError(doc, "runtime_version", *problem)
        if self.schema_version != SCHEMA_VERSION:
            raise SpecError(
                doc,
                "schema_version",
                f"is {self.schema_version!r}, this runtime reads {SCHEMA_VERSION}",
                "use the same airflow-ray-train version on both sides (the hook ships the runtime itself)",
            )
        if not isinstance(self.train_func, str) or not _TRAIN_FUNC_RE.fullmatch(self.train_func):
            raise SpecError(
                doc,
                "train_func",
                f"is {self.train_func!r}",
                "give an import path 'package.module:function', e.g. 'my_models.digits:train_func'",
            )
        for name, value in (("run_name", self.run_name), ("submission_id", self.submission_id)):
            if not isinstance(value, str) or not _RUN_NAME_RE.fullmatch(value) or len(value) > 200:
                raise SpecError(
                    doc,
                    name,
                    f"is {value!r}",
                    "use 1-200 characters from letters, digits, '_', '.', '=' and '-', starting with a letter or digit",
                )
        for name in ("train_loop_config", "scaling_config", "run_config"):
            if not isinstance(getattr(self, name), dict):
                raise SpecError(
                    doc, name, f"is a {type(getattr(self, name)).__name__}", "pass a dict (or leave it out)"
                )
        check_json_value(doc, "train_loop_config", self.train_loop_config)
        grace = self.stop_grace_period_s
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= 86400:
            raise SpecError(doc, "stop_grace_period_s", f"is {grace!r}", "give seconds from 0 (stop at once) to 86400")
        self._check_scaling_config()
        self._check_run_config()
        if isinstance(self.tracking, dict):
            check_keys(doc, "tracking.", self.tracking, {f.name: None for f in fields(TrackingSpec)}, "tracking")
            object.__setattr__(self, "tracking", TrackingSpec(**self.tracking))
        elif self.tracking is not None and not isinstance(self.tracking, TrackingSpec):
            raise SpecError(doc, "tracking", f"is a {type(self.tracking).__name__}", "pass a dict, or leave it out")

    def _check_scaling_config(self) -> None:
        doc, sc = "TrainSpec", self.scaling_config
        check_keys(doc, "scaling_config.", sc, SCALING_CONFIG_FIELDS, "ray.train.ScalingConfig")
        _check_types(doc, "scaling_config.", sc, SCALING_CONFIG_FIELDS)
        workers = sc.get("num_workers")
        if isinstance(workers, list):
            ints = all(isinstance(n, int) and not isinstance(n, bool) for n in workers)
            if len(workers) != 2 or not ints or not 1 <= workers[0] <= workers[1]:
                raise SpecError(
                    doc,
                    "scaling_config.num_workers",
                    f"is {workers!r}",
                    "give a number of workers, or [min, max] with 1 <= min <= max for elastic training "
                    "(it starts once min workers fit and grows to max), e.g. [2, 4]",
                )
        elif workers is not None and workers < 1:
            raise SpecError(doc, "scaling_config.num_workers", f"is {workers}", "use 1 or more workers")
        elif "elastic_resize_monitor_interval_s" in sc:
            raise SpecError(
                doc,
                "scaling_config.elastic_resize_monitor_interval_s",
                f"is set while num_workers is {workers!r}, a fixed number",
                "give num_workers as [min, max] for elastic training, or leave the interval out",
            )
        strategy = sc.get("placement_strategy")
        if strategy is not None and strategy not in PLACEMENT_STRATEGIES:
            raise SpecError(
                doc, "scaling_config.placement_strategy", f"is {strategy!r}", f"use one of {PLACEMENT_STRATEGIES}"
            )
        for key, amount in (sc.get("resources_per_worker") or {}).items():
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                raise SpecError(
                    doc, f"scaling_config.resources_per_worker[{key!r}]", f"is {amount!r}", "use a number >= 0"
                )
        check_json_value(doc, "scaling_config", sc)

    def _check_run_config(self) -> None:
        doc, rc = "TrainSpec", self.run_config
        check_keys(doc, "run_config.", rc, RUN_CONFIG_FIELDS, "ray.train.RunConfig")
        _check_types(doc, "run_config.", rc, RUN_CONFIG_FIELDS)
        storage = rc.get("storage_path")
        if storage is not None and _CONTROL_RE.search(storage):
            raise SpecError(
                doc,
                "run_config.storage_path",
                f"is {storage!r}, which holds a control character (a newline, a tab, an escape)",
                "remove it: a storage path is one line of printable characters (check the template or the "
                "run conf it comes from)",
            )
        if storage is not None and not (_is_uri(storage) or storage.startswith(("/", "~"))):
            raise SpecError(
                doc,
                "run_config.storage_path",
                f"is the relative path {storage!r}, which Ray resolves on the cluster, not here",
                "use an absolute path every node sees (e.g. '/shared/ray_results') or a URI like 's3://bucket/runs'",
            )
        name = rc.get("name")
        if name is not None and (not _RUN_NAME_RE.fullmatch(name) or len(name) > USER_RUN_NAME_LIMIT):
            raise SpecError(
                doc,
                "run_config.name",
                f"is {name!r}",
                f"use 1-{USER_RUN_NAME_LIMIT} characters from letters, digits, '_', '.', '=' and '-' (no spaces, "
                "newlines or other control characters), starting with a letter or digit",
            )
        checkpoint = rc.get("checkpoint_config") or {}
        check_keys(
            doc, "run_config.checkpoint_config.", checkpoint, CHECKPOINT_CONFIG_FIELDS, "ray.train.CheckpointConfig"
        )
        _check_types(doc, "run_config.checkpoint_config.", checkpoint, CHECKPOINT_CONFIG_FIELDS)
        keep = checkpoint.get("num_to_keep")
        if keep is not None and keep < 1:
            raise SpecError(
                doc,
                "run_config.checkpoint_config.num_to_keep",
                f"is {keep}",
                "use 1 or more, or leave it out to keep all",
            )
        order = checkpoint.get("checkpoint_score_order")
        if order is not None and order not in ("max", "min"):
            raise SpecError(
                doc, "run_config.checkpoint_config.checkpoint_score_order", f"is {order!r}", "use 'max' or 'min'"
            )
        failure = rc.get("failure_config") or {}
        check_keys(doc, "run_config.failure_config.", failure, FAILURE_CONFIG_FIELDS, "ray.train.FailureConfig")
        _check_types(doc, "run_config.failure_config.", failure, FAILURE_CONFIG_FIELDS)
        for key in ("max_failures", "controller_failure_limit", "max_preemption_failures"):
            value = failure.get(key)
            if value is not None and value < -1:
                raise SpecError(doc, f"run_config.failure_config.{key}", f"is {value}", "use -1 (no limit) or 0 and up")
        check_json_value(doc, "run_config", rc)

    @property
    def worker_range(self) -> tuple[int, int]:
        """The fewest and the most workers ``scaling_config.num_workers`` allows (both the same unless elastic)."""
        workers = self.scaling_config.get("num_workers") or 1
        return (workers[0], workers[1]) if isinstance(workers, list) else (workers, workers)

    @property
    def elastic(self) -> bool:
        return isinstance(self.scaling_config.get("num_workers"), list)

    @property
    def effective_run_name(self) -> str:
        """The Ray Train run name (and the MLflow run's key): ``run_name``, the name of this task instance's
        series of tries, behind the user's ``run_config.name`` when one is set. A user's name alone would be
        shared by every DAG run, mapped task and deployment that uses it: a nightly run would resume last
        night's finished run."""
        name = self.run_config.get("name")
        return f"{name}.{self.run_name}" if name else self.run_name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TrainSpec:
        return cls(**_document_kwargs("TrainSpec", cls, data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        return cls.from_dict(_loads("TrainSpec", text))

    def to_arg(self) -> str:
        """The spec as one shell-safe command-line word: ``b64:<urlsafe base64 of the JSON>``."""
        return _B64_PREFIX + base64.urlsafe_b64encode(self.to_json().encode()).decode()

    @property
    def shipped_file(self) -> str:
        """The file name the spec travels under, beside the code in the job's ``py_modules``."""
        return f"_airflow_ray_train_spec_{self.submission_id}.json"

    @property
    def credentials_file(self) -> str:
        """The file the tracking server's credentials travel in, beside ``shipped_file`` (never in the spec)."""
        return f"_airflow_ray_train_credentials_{self.submission_id}.json"

    def shipped_arg(self) -> str:
        """The driver's argument for the spec shipped as ``shipped_file``: short, whatever the spec's size,
        and nothing of the configuration on the command line (``ps``, the dashboard)."""
        return _SHIPPED_PREFIX + self.shipped_file

    @classmethod
    def from_arg(cls, arg: str) -> TrainSpec:
        """Read the driver's argument: ``shipped:<file>`` (what the hook sends: a file on ``sys.path``),
        ``b64:...``, inline JSON, or a JSON file path."""
        if arg.startswith(_SHIPPED_PREFIX):
            return cls.from_json(_read_shipped(arg[len(_SHIPPED_PREFIX) :]))
        if arg.startswith(_B64_PREFIX):
            return cls.from_json(base64.urlsafe_b64decode(arg[len(_B64_PREFIX) :].encode()).decode())
        if arg.lstrip().startswith("{"):
            return cls.from_json(arg)
        with open(arg, encoding="utf-8") as handle:
            return cls.from_json(handle.read())


def shipped_dir(name: str) -> str | None:
    """The ``sys.path`` entry holding the file ``name`` shipped in the job's ``py_modules`` (Ray unpacks each
    package into a folder of its own and puts it on ``sys.path``), or None when no package holds it."""
    for entry in sys.path:
        if os.path.isfile(os.path.join(entry or ".", name)):
            return entry or "."
    return None


def find_shipped(name: str) -> str | None:
    """The text of a file shipped in the job's ``py_modules``, or None when no package holds it."""
    entry = shipped_dir(name)
    if entry is None:
        return None
    with open(os.path.join(entry, name), encoding="utf-8") as handle:
        return handle.read()


def _read_shipped(name: str) -> str:
    text = find_shipped(name)
    if text is not None:
        return text
    raise SpecError(
        "TrainSpec",
        "(document)",
        f"{name!r} is on no sys.path entry of the job driver",
        "submit the job through the operator, which ships the spec in runtime_env.py_modules",
    )


@dataclass(frozen=True)
class CheckpointRecord:
    """One kept checkpoint and the metrics reported with it."""

    path: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultManifest:
    """What happened: written by the job driver next to the run, on success and on failure.

    ``status`` is ``SUCCEEDED``, ``FAILED`` or ``STOPPED``. Paths are plain on local and shared
    filesystems and keep their scheme (``s3://...``) on remote storage. ``error`` is ``None`` on success,
    else ``{"type", "message", "traceback"}`` (the traceback's tail). A tracked run names its MLflow run and,
    when one was registered, the model version (MLflow's version number, a string); ``mlflow_warning`` says
    why a run with ``mlflow_required=False`` trained untracked (the cluster could not reach the server).
    """

    status: str
    submission_id: str
    run_name: str
    run_path: str
    manifest_path: str
    checkpoint_path: str | None = None
    best_checkpoint_path: str | None = None
    best_checkpoints: list[CheckpointRecord] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    metrics_history_path: str | None = None
    learning_curve_path: str | None = None
    num_reports: int = 0
    error: dict[str, str] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    ray_version: str | None = None
    #: The airflow-ray-train-runtime that ran the job (shipped with it, or installed on the cluster).
    runtime_version: str | None = None
    mlflow_run_id: str | None = None
    mlflow_run_url: str | None = None
    model_version: str | None = None
    mlflow_warning: str | None = None
    #: What the training used (``runtime.usage``): ``try`` for this job, ``series`` summed over the jobs that
    #: trained this Train run.
    usage: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        doc = "ResultManifest"
        if self.schema_version != SCHEMA_VERSION:
            raise SpecError(
                doc,
                "schema_version",
                f"is {self.schema_version!r}, this reader knows {SCHEMA_VERSION}",
                "use the same airflow-ray-train version on both sides",
            )
        if not JobStatus.ended(self.status):
            raise SpecError(
                doc, "status", f"is {self.status!r}", f"use one of {[str(status) for status in TERMINAL_STATUSES]}"
            )
        if self.status == JobStatus.SUCCEEDED and self.error is not None:
            raise SpecError(doc, "error", "is set on a SUCCEEDED manifest", "leave error None when the run succeeded")
        if self.error is not None:
            check_keys(doc, "error.", self.error, {"type": 0, "message": 0, "traceback": 0}, "error")
        if not isinstance(self.metrics, dict):
            raise SpecError(doc, "metrics", f"is a {type(self.metrics).__name__}", "pass a dict")
        check_json_value(doc, "metrics", self.metrics)
        if not isinstance(self.usage, dict):
            raise SpecError(doc, "usage", f"is a {type(self.usage).__name__}", "pass a dict")
        records = [r if isinstance(r, CheckpointRecord) else _checkpoint_record(r) for r in self.best_checkpoints]
        object.__setattr__(self, "best_checkpoints", records)

    @property
    def succeeded(self) -> bool:
        return self.status == JobStatus.SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ResultManifest:
        return cls(**_document_kwargs("ResultManifest", cls, data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ResultManifest:
        return cls.from_dict(_loads("ResultManifest", text))


def _checkpoint_record(data: Any) -> CheckpointRecord:
    if not isinstance(data, dict):
        raise SpecError("ResultManifest", "best_checkpoints[]", f"is a {type(data).__name__}", "use {path, metrics}")
    check_keys("ResultManifest", "best_checkpoints[].", data, {"path": 0, "metrics": 0}, "checkpoint record")
    return CheckpointRecord(path=str(data["path"]), metrics=dict(data.get("metrics") or {}))


def _loads(document: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            document, "(document)", f"is not valid JSON ({exc})", "send the JSON the other side wrote"
        ) from exc


def _document_kwargs(document: str, cls: type, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SpecError(document, "(document)", f"is a {type(data).__name__}", "send a JSON object")
    # The version first: a provider of another release line may send keys this runtime does not know, and
    # the version says why (a spec from before runtime_version existed is checked by schema_version).
    if document == "TrainSpec" and isinstance(data.get("runtime_version"), str):
        problem = runtime_version_problem(data["runtime_version"], RUNTIME_VERSION)
        if problem:
            raise SpecError(document, "runtime_version", *problem)
    allowed = {f.name: None for f in fields(cls)}
    check_keys(document, "", data, allowed, document)
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise SpecError(
            document,
            "schema_version",
            f"is {version!r}, this side reads {SCHEMA_VERSION}",
            "use the same airflow-ray-train version on both sides (the hook ships the runtime itself)",
        )
    required = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in data
    ]
    if required:
        raise SpecError(document, required[0], "is missing", f"set {required[0]}")
    return dict(data)


def manifest_from_log(log_text: str) -> ResultManifest | None:
    """The last manifest the driver printed in its job log (a line that starts with ``MANIFEST_MARKER``; lines
    end at ``\\n`` only, as the log follower reads them), or None if it printed none."""
    for line in reversed(log_text.split("\n")):
        if line.startswith(MANIFEST_MARKER):
            return ResultManifest.from_json(line[len(MANIFEST_MARKER) :].rstrip("\r"))
    return None


def quote_log_line(line: str) -> str:
    """``line`` as the driver prints it after its manifest: behind ``QUOTE_PREFIX`` when a log reader could take
    it for a manifest line: it starts with the marker's first letter once the colour codes a reader strips are
    gone (a line of nothing but colour codes, or with another escape, counts too). What a worker's exception or
    a path says can then never pass for the manifest; Ray's coloured ``(RayTrainWorker pid=...)`` lines stay as
    they are."""
    bare = _LEADING_COLOURS.sub("", line)
    risky = bare.startswith((MANIFEST_MARKER[0], "\x1b")) or bool(line and not bare)
    return QUOTE_PREFIX + line if risky else line
