"""The Ray Jobs REST API as both hooks speak it: its paths, its replies, the one retry policy, and the errors a
failed call becomes. No HTTP client here: ``RayTrainHook`` (httpx) and ``AsyncRayTrainHook`` (aiohttp) send the
requests and ask ``Attempts`` what to do with each answer, so the twins cannot drift.
"""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainClusterError
from airflow_ray_train.hooks.settings import ClusterSettings
from airflow_ray_train_runtime.spec import JobStatus
from airflow_ray_train_runtime.stop import STOP_WAIT_ENV

#: What a sent call gives its caller (the reply itself, or the client's response object).
Answer = TypeVar("Answer")

VERSION = "/api/version"
JOBS = "/api/jobs/"
NODES = "/api/v0/nodes"
#: How long a stop is waited for: Ray sends SIGKILL 3 s after SIGTERM (unless the job's runtime_env sets
#: another wait, see ``JobInfo.stop_timeout_s``) and reports STOPPED ~3 s later.
STOP_TIMEOUT_S = 30.0
STOP_POLL_S = 0.5
_EXCEPTION_LINE_RE = re.compile(r"^\s*((?:[A-Za-z_][\w.]*)?(?:Error|Exception): .+)$", re.MULTILINE)


def job_path(job_id: str, action: str = "") -> str:
    """``/api/jobs/<id>`` and its actions (``logs``, ``stop``)."""
    return f"{JOBS}{job_id}" + (f"/{action}" if action else "")


def package_path(name: str) -> str:
    return f"/api/packages/gcs/{name}"


def log_stream_url(address: str, job_id: str) -> str:
    """The websocket that follows a job's log: ``ws(s)://<dashboard>/api/jobs/<id>/logs/tail``."""
    parts = urlsplit(address)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, f"{parts.path.rstrip('/')}{job_path(job_id, 'logs/tail')}", "", ""))


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, read in full."""

    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def last_exception_line(text: str) -> str | None:
    """The last ``SomeError: message`` line of a traceback (Ray puts whole ones in replies and messages)."""
    found = _EXCEPTION_LINE_RE.findall(text)
    return found[-1].strip() if found else None


def ray_says(text: str, limit: int = 1500) -> str:
    """What Ray answered, short: a traceback becomes its last exception line, anything else its tail."""
    text = text.strip()
    return last_exception_line(text) or (text if len(text) <= limit else "..." + text[-limit:])


def http_error(settings: ClusterSettings, method: str, path: str, reply: Reply) -> RayTrainClusterError:
    return RayTrainClusterError(
        f"{method} {path} on {settings.address} failed with HTTP {reply.status_code}: {ray_says(reply.text)}",
        http_status=reply.status_code,
    )


def unreachable_error(
    settings: ClusterSettings, conn_id: str, exc: BaseException, attempts: int
) -> RayTrainClusterError:
    return RayTrainClusterError(
        f"cannot reach the Ray cluster at {settings.address} ({type(exc).__name__}: {exc}) "
        f"after {attempts} attempts. Fix: check that the head is up and that the "
        f"'{conn_id}' connection's host is its dashboard address (port 8265 by default)."
    )


def auth_error(settings: ClusterSettings, conn_id: str, path: str, reply: Reply) -> RayTrainAuthError:
    return RayTrainAuthError(
        f"the Ray cluster at {settings.address} rejected the request to {path} "
        f"(HTTP {reply.status_code}: {reply.text.strip()[:200]}). Fix: set the password of "
        f"connection '{conn_id}' to the cluster's token (`ray get-auth-token` on the head).",
        http_status=reply.status_code,
    )


class Step(enum.Enum):
    """What a hook does after one attempt of a call."""

    RETURN = "return"  # hand the reply to the caller
    RETRY = "retry"  # wait ``Attempts.delay``, then send again
    RELOAD = "reload"  # read the connection again (a rotated token), then send again at once
    GIVE_UP = "give_up"  # raise ``Attempts.error``


@dataclass(frozen=True)
class RetryPolicy:
    """When a Jobs API call is sent again: the one policy both hooks share.

    :param max_retries: retries, with exponential backoff, when the cluster cannot be reached or is busy.
    :param backoff: seconds before the first retry; doubles each time.
    """

    max_retries: int = 3
    backoff: float = 1.0
    retry_status: frozenset[int] = frozenset({502, 503, 504})

    def is_retryable(self, status_code: int | None) -> bool:
        """A transport failure (``None``) or a busy gateway: the cluster may answer in a moment."""
        return status_code is None or status_code in self.retry_status


class CallAttempts:
    """The attempts of one HTTP call under a ``RetryPolicy``: after each answer (or transport failure), the
    step to take. A 401/403 reads the connection once more (its secret may have been rotated), then gives up.
    Every hook asks one of these, so the Jobs API's twins and the MLflow hook retry alike; a subclass says
    only what error each way of giving up raises."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self.reloaded = False
        self.error: Exception | None = None

    @property
    def delay(self) -> float:
        return float(self.policy.backoff * 2 ** (self.attempt - 1))

    def answered(self, reply: Reply, ok: tuple[int, ...]) -> Step:
        if reply.status_code in (401, 403):
            if self.reloaded:
                self.error = self.rejected(reply)
                return Step.GIVE_UP
            self.reloaded = True
            return Step.RELOAD
        if reply.status_code in ok or not self.policy.is_retryable(reply.status_code):
            return Step.RETURN
        return Step.RETURN if self.attempt >= self.policy.max_retries else self._next()

    def failed(self, exc: BaseException) -> Step:
        if self.attempt >= self.policy.max_retries:
            self.error = self.unreachable(exc, self.attempt + 1)
            return Step.GIVE_UP
        return self._next()

    def _next(self) -> Step:
        self.attempt += 1
        return Step.RETRY

    def rejected(self, reply: Reply) -> Exception:
        """The error of credentials refused twice."""
        raise NotImplementedError

    def unreachable(self, exc: BaseException, attempts: int) -> Exception:
        """The error of a server that never answered."""
        raise NotImplementedError


def send_with_retries(
    attempts: CallAttempts,
    send: Callable[[], tuple[Reply, Answer]],
    *,
    ok: tuple[int, ...],
    transport_errors: tuple[type[BaseException], ...],
    reload: Callable[[], None],
    log: Any,
    what: str,
) -> Answer:
    """Carry out ``attempts`` for a blocking client: ``send()`` the call (its reply, and what the caller gets
    back), then retry after the delay, ``reload()`` the connection, give up or return, as they decide."""
    while True:
        try:
            reply, answer = send()
            step = attempts.answered(reply, ok)
        except transport_errors as exc:
            step = attempts.failed(exc)
        if step is Step.RETURN:
            return answer
        if step is Step.GIVE_UP and attempts.error is not None:
            raise attempts.error
        if step is Step.RELOAD:
            log.warning("%s rejected the credentials; reading the connection again", what)
            reload()
            continue
        log.warning("%s not ready (attempt %d), retrying in %.1f s", what, attempts.attempt, attempts.delay)
        time.sleep(attempts.delay)


class Attempts(CallAttempts):
    """The attempts of one Jobs API call (``CallAttempts``), with the cluster's errors."""

    def __init__(self, policy: RetryPolicy, settings: ClusterSettings, conn_id: str, path: str) -> None:
        super().__init__(policy)
        self.settings = settings
        self.conn_id = conn_id
        self.path = path

    def rejected(self, reply: Reply) -> Exception:
        return auth_error(self.settings, self.conn_id, self.path, reply)

    def unreachable(self, exc: BaseException, attempts: int) -> Exception:
        return unreachable_error(self.settings, self.conn_id, exc, attempts)


def submit_body(entrypoint: str, submission_id: str, **optional: Any) -> dict[str, Any]:
    """The ``POST /api/jobs/`` body: the entrypoint, the id, and the optional fields that are set."""
    given = {key: value for key, value in optional.items() if value is not None}
    return {"entrypoint": entrypoint, "submission_id": submission_id, **given}


@dataclass(frozen=True)
class JobInfo:
    """A Ray job's record, as the Jobs API reports it (Ray's own SDK calls it ``JobDetails``): the status as a
    ``JobStatus`` (a status this code does not know stays the string Ray sent), and ``metadata`` always a dict."""

    submission_id: str
    status: JobStatus | str
    message: str = ""
    error_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    start_time: int | None = None  # milliseconds since the epoch
    end_time: int | None = None
    driver_exit_code: int | None = None
    entrypoint: str = ""
    runtime_env: dict[str, Any] = field(default_factory=dict)
    entrypoint_num_cpus: float = 0.0
    entrypoint_num_gpus: float = 0.0

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> JobInfo:
        status = str(data.get("status") or "")
        return cls(
            submission_id=str(data.get("submission_id") or data.get("job_id") or ""),
            status=JobStatus(status) if status in JobStatus.__members__ else status,
            message=str(data.get("message") or ""),
            error_type=data.get("error_type"),
            metadata=dict(data.get("metadata") or {}),
            start_time=data.get("start_time"),
            end_time=data.get("end_time"),
            driver_exit_code=data.get("driver_exit_code"),
            entrypoint=str(data.get("entrypoint") or ""),
            runtime_env=dict(data.get("runtime_env") or {}),
            entrypoint_num_cpus=float(data.get("entrypoint_num_cpus") or 0.0),
            entrypoint_num_gpus=float(data.get("entrypoint_num_gpus") or 0.0),
        )

    @property
    def ended(self) -> bool:
        return JobStatus.ended(self.status)

    @property
    def wall_s(self) -> float | None:
        """Seconds from the job's start to its end, as Ray recorded them; None before it ended."""
        if self.start_time is None or not self.end_time:
            return None
        return max(0.0, (self.end_time - self.start_time) / 1000.0)

    @property
    def stop_timeout_s(self) -> float:
        """How long a stop of this job is waited for: ``STOP_TIMEOUT_S`` past the job supervisor's own wait
        between SIGTERM and SIGKILL, which a graceful stop sets in the job's env vars (``runtime.stop``)."""
        env_vars = self.runtime_env.get("env_vars") or {}
        try:
            wait = float(env_vars.get(STOP_WAIT_ENV) or 0)
        except (TypeError, ValueError):
            wait = 0.0
        return STOP_TIMEOUT_S + max(wait, 0.0)


def alive_nodes(data: Any) -> list[dict[str, Any]] | None:
    """Each alive node's total resources from the state API's ``/api/v0/nodes`` reply, or None if unreadable."""
    try:
        nodes = data["data"]["result"]["result"]
    except (KeyError, TypeError):
        return None
    return [
        {"node_id": n.get("node_id"), "resources": dict(n.get("resources_total") or {})}
        for n in nodes
        if n.get("state") == "ALIVE"
    ]
