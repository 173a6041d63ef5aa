"""``MlflowHook``: the MLflow tracking server's REST API (``/api/2.0/mlflow/...``) with httpx. No ``mlflow`` import:
the Airflow side needs no MLflow install (the cluster does, see ``runtime.tracking``).

Connection ``mlflow`` (default id ``mlflow_default``): host is the tracking server (``http://mlflow:5000``),
login/password are HTTP basic auth, extras ``token`` (a bearer token, instead of basic auth), ``verify`` (TLS
verification, or a CA bundle path), ``experiment`` (the default experiment name) and ``ui_url`` (the address
people open the UI at, when it is not the host's). A task uses MLflow when it names a connection
(``mlflow_conn_id``), or ``[ray_train] mlflow_conn_id`` or ``[ray_train] mlflow_tracking_uri`` is set
(``mlflow_hook``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import httpx
from airflow.sdk import Connection

from airflow_ray_train.compat import AirflowNotFoundException, BaseHook, mask_secret
from airflow_ray_train.config import ray_train_setting
from airflow_ray_train.connection_form import MLFLOW_UI_FIELD_BEHAVIOUR
from airflow_ray_train.exceptions import RayTrainConfigError, RayTrainMlflowAuthError, RayTrainMlflowError
from airflow_ray_train.hooks.jobs_api import CallAttempts, Reply, RetryPolicy, send_with_retries
from airflow_ray_train.hooks.settings import as_bool

DEFAULT_CONN_ID = "mlflow_default"
API = "/api/2.0/mlflow"
#: How often an alias set refused as a raced insert is sent (``MlflowHook.set_alias``).
ALIAS_SET_ATTEMPTS = 3
#: A unique key broken by a racing insert, as SQLite, PostgreSQL and MySQL word it in MLflow's reason.
RACED_INSERT_SIGNS = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


@dataclass(frozen=True)
class MlflowSettings:
    """Where the tracking server is and how to authenticate, from the connection or ``[ray_train]``."""

    tracking_uri: str
    conn_id: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    verify: bool | str = True
    experiment: str | None = None
    ui_url: str | None = None

    def __repr__(self) -> str:  # never show the credentials
        return f"MlflowSettings(tracking_uri={self.tracking_uri!r}, conn_id={self.conn_id!r})"

    @property
    def source(self) -> str:
        """Where the settings come from, for messages."""
        return f"connection {self.conn_id!r}" if self.conn_id else "[ray_train] mlflow_tracking_uri"

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """The run's page in the MLflow UI."""
        return f"{(self.ui_url or self.tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str) -> str:
        return f"{(self.ui_url or self.tracking_uri).rstrip('/')}/#/models/{name}/versions/{version}"

    def credentials_env(self) -> dict[str, str]:
        """The credentials as the MLflow client reads them (its ``MLFLOW_TRACKING_*`` variables): what the cluster
        side gets, in a file of its own, never in the spec or the job's environment."""
        env: dict[str, str] = {}
        if self.token:
            env["MLFLOW_TRACKING_TOKEN"] = self.token
        elif self.username or self.password:
            env["MLFLOW_TRACKING_USERNAME"] = self.username or ""
            env["MLFLOW_TRACKING_PASSWORD"] = self.password or ""
        if self.verify is False:
            env["MLFLOW_TRACKING_INSECURE_TLS"] = "true"
        return env

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def settings_from_connection(conn: Connection, extras: dict[str, Any]) -> MlflowSettings:
    """The settings of an ``mlflow`` connection; no network I/O."""
    host = (conn.host or "").strip()
    if not host:
        raise RayTrainConfigError(
            f"connection {conn.conn_id!r} has no host. Fix: set it to the MLflow tracking server's address, "
            "e.g. http://mlflow:5000.",
            field="mlflow_conn_id",
        )
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}"
    if conn.port and host.count(":") < 2:
        host = f"{host}:{conn.port}"
    return MlflowSettings(
        tracking_uri=host.rstrip("/"),
        conn_id=conn.conn_id,
        username=conn.login or None,
        password=conn.password or None,
        token=str(extras.get("token") or "") or None,
        verify=as_bool(extras.get("verify", True)),
        experiment=str(extras.get("experiment") or "") or None,
        ui_url=str(extras.get("ui_url") or "").rstrip("/") or None,
    )


def mlflow_reason(reply: httpx.Response | Reply) -> str:
    """MLflow's own words from an error reply (``{"error_code", "message"}``), else the reply's start."""
    try:
        body = reply.json()
    except ValueError:
        return reply.text.strip()[:500] or f"HTTP {reply.status_code}"
    if isinstance(body, dict) and body.get("message"):
        return f"{body.get('error_code', 'ERROR')}: {body['message']}"
    return reply.text.strip()[:500]


def error_code(reply: httpx.Response) -> str | None:
    try:
        body = reply.json()
    except ValueError:
        return None
    return str(body.get("error_code")) if isinstance(body, dict) and body.get("error_code") else None


class MlflowAttempts(CallAttempts):
    """The attempts of one MLflow call (``CallAttempts``), with the tracking server's errors."""

    def __init__(self, hook: MlflowHook, endpoint: str) -> None:
        super().__init__(hook.retry_policy)
        self.hook = hook
        self.endpoint = endpoint

    def rejected(self, reply: Reply) -> Exception:
        settings = self.hook.settings
        return RayTrainMlflowAuthError(
            f"the MLflow tracking server at {settings.tracking_uri} rejected the request to {self.endpoint} "
            f"(HTTP {reply.status_code}: {mlflow_reason(reply)}). Fix: set the login and password (or the extra "
            f"'token') of the {settings.source}.",
            http_status=reply.status_code,
        )

    def unreachable(self, exc: BaseException, attempts: int) -> Exception:
        settings = self.hook.settings
        return RayTrainMlflowError(
            f"cannot reach the MLflow tracking server at {settings.tracking_uri} ({type(exc).__name__}: {exc}) "
            f"after {attempts} attempts. Fix: start the server, or point the {settings.source} at it; or pass "
            "mlflow_required=False to train untracked when it is down.",
            unreachable=True,
        )


class MlflowHook(BaseHook):
    """The MLflow tracking server's REST API: experiments, runs, registered models and their aliases.

    :param mlflow_conn_id: the ``mlflow`` connection; None with ``tracking_uri``.
    :param tracking_uri: a server address to use without a connection (no credentials).
    :param timeout: seconds per HTTP request.
    :param max_retries: retries, with exponential backoff, when the server cannot be reached or is busy.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(
        self,
        mlflow_conn_id: str | None = default_conn_name,
        *,
        tracking_uri: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id
        self.tracking_uri = tracking_uri
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries=max_retries)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return MLFLOW_UI_FIELD_BEHAVIOUR

    @cached_property
    def settings(self) -> MlflowSettings:
        if self.mlflow_conn_id is None:
            if not self.tracking_uri:
                raise RayTrainConfigError("MlflowHook needs mlflow_conn_id or tracking_uri", field="mlflow_conn_id")
            return MlflowSettings(tracking_uri=self.tracking_uri.rstrip("/"))
        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException as exc:
            raise RayTrainConfigError(
                f"connection {self.mlflow_conn_id!r} does not exist. Fix: create it (type 'mlflow', host = your "
                "MLflow tracking server, e.g. http://mlflow:5000), or name another with mlflow_conn_id.",
                field="mlflow_conn_id",
            ) from exc
        settings = settings_from_connection(conn, conn.extra_dejson or {})
        for secret in (settings.password, settings.token):
            if secret:
                mask_secret(secret)
        return settings

    @cached_property
    def client(self) -> httpx.Client:
        settings = self.settings
        auth = (settings.username or "", settings.password or "") if not settings.token else None
        return httpx.Client(
            base_url=settings.tracking_uri,
            headers=settings.auth_headers(),
            auth=auth if auth and any(auth) else None,
            verify=settings.verify,
            timeout=self.timeout,
        )

    def get_conn(self) -> httpx.Client:
        return self.client

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _send(self, method: str, endpoint: str, **kwargs: Any) -> httpx.Response:
        """One call under the project's one retry policy (``CallAttempts``): sent again when the server cannot
        be reached or is busy, the connection read again once when it rejects the credentials; raises
        ``RayTrainMlflowError`` naming the address and the fix when it never answers or keeps rejecting them."""

        def send() -> tuple[Reply, httpx.Response]:
            response = self.client.request(method, f"{API}/{endpoint}", **kwargs)
            return Reply(response.status_code, response.text), response

        return send_with_retries(
            MlflowAttempts(self, endpoint),
            send,
            ok=(),
            transport_errors=(httpx.TransportError,),
            reload=self.reload_settings,
            log=self.log,
            what=f"The MLflow tracking server ({endpoint})",
        )

    def reload_settings(self) -> None:
        """Forget the connection and the client made from it: the next call reads the connection again."""
        self.close()
        self.__dict__.pop("settings", None)

    def call(self, method: str, endpoint: str, *, allow: tuple[str, ...] = (), **kwargs: Any) -> dict[str, Any]:
        """The JSON answer of ``endpoint``; an error whose ``error_code`` is in ``allow`` returns ``{}``, any
        other raises ``RayTrainMlflowError`` with MLflow's reason."""
        reply = self._send(method, endpoint, **kwargs)
        if reply.status_code == 200:
            return dict(reply.json() or {})
        code = error_code(reply)
        if code in allow:
            return {}
        raise RayTrainMlflowError(
            f"{method} {endpoint} on the MLflow tracking server at {self.settings.tracking_uri} failed with HTTP "
            f"{reply.status_code}: {mlflow_reason(reply)}",
            http_status=reply.status_code,
            error_code=code,
            reason=mlflow_reason(reply),
        )

    # -- experiments and runs -------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.call(
                "GET",
                "experiments/get-by-name",
                params={"experiment_name": "Default"},
                allow=("RESOURCE_DOES_NOT_EXIST",),
            )
        except Exception as exc:  # noqa: BLE001 - the UI shows the message
            return False, str(exc)
        return True, f"Connected to the MLflow tracking server at {self.settings.tracking_uri}"

    def experiment_id(self, name: str) -> str:
        """The id of the experiment ``name``, made if it does not exist yet."""
        found = self.call(
            "GET", "experiments/get-by-name", params={"experiment_name": name}, allow=("RESOURCE_DOES_NOT_EXIST",)
        )
        experiment = found.get("experiment")
        if experiment is None:
            made = self.call("POST", "experiments/create", json={"name": name}, allow=("RESOURCE_ALREADY_EXISTS",))
            if made.get("experiment_id"):
                return str(made["experiment_id"])
            # Made by another task at the same moment.
            experiment = self.call("GET", "experiments/get-by-name", params={"experiment_name": name})["experiment"]
        if experiment.get("lifecycle_stage") == "deleted":
            raise RayTrainConfigError(
                f"the MLflow experiment {name!r} (id {experiment['experiment_id']}) is deleted. Fix: restore it "
                f"(`mlflow experiments restore --experiment-id {experiment['experiment_id']}`) or name another "
                "with mlflow_experiment.",
                field="mlflow_experiment",
            )
        return str(experiment["experiment_id"])

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> dict[str, Any]:
        """A new RUNNING run; returns its ``info``."""
        body = {
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": int(time.time() * 1000),
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        return dict(self.call("POST", "runs/create", json=body)["run"]["info"])

    def find_run(self, experiment_id: str, tag: str, value: str) -> dict[str, Any] | None:
        """The newest run of the experiment whose tag ``tag`` is ``value`` (its ``info``), or None."""
        body = {
            "experiment_ids": [experiment_id],
            "filter": f"tags.`{tag}` = '{value}'",
            "max_results": 1,
            "order_by": ["attributes.start_time DESC"],
        }
        runs = self.call("POST", "runs/search", json=body).get("runs") or []
        return dict(runs[0]["info"]) if runs else None

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run: ``info`` and ``data`` (``metrics``, ``params``, ``tags`` as lists of key/value)."""
        return dict(self.call("GET", "runs/get", params={"run_id": run_id})["run"])

    def update_run(self, run_id: str, status: str, *, end: bool = False) -> None:
        """Set the run's status (``RUNNING`` for a retry that resumes it), with an end time when ``end``."""
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if end:
            body["end_time"] = int(time.time() * 1000)
        self.call("POST", "runs/update", json=body)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.call(
            "POST", "runs/log-batch", json={"run_id": run_id, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        )

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0, at: float | None = None) -> None:
        """Log ``metrics`` at ``step``, stamped ``at`` (Unix seconds; now by default)."""
        now = int((time.time() if at is None else at) * 1000)
        batch = [{"key": k, "value": float(v), "timestamp": now, "step": step} for k, v in metrics.items()]
        self.call("POST", "runs/log-batch", json={"run_id": run_id, "metrics": batch})

    # -- registered models ----------------------------------------------------------------------------------

    def create_registered_model(self, name: str) -> None:
        """Make the registered model ``name`` unless it exists. A name MLflow refuses raises
        ``RayTrainConfigError`` with MLflow's reason."""
        try:
            self.call("POST", "registered-models/create", json={"name": name}, allow=("RESOURCE_ALREADY_EXISTS",))
        except RayTrainMlflowError as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            raise RayTrainConfigError(
                f"register_model {name!r}: the MLflow tracking server refuses the name ({exc.reason}). Fix: pass "
                "a name MLflow's Model Registry accepts.",
                field="register_model",
            ) from exc

    def get_registered_model(self, name: str) -> dict[str, Any] | None:
        """The registered model (``aliases`` as ``[{alias, version}]``), or None if there is none."""
        found = self.call("GET", "registered-models/get", params={"name": name}, allow=("RESOURCE_DOES_NOT_EXIST",))
        return found.get("registered_model")

    def version_by_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        """The model version under ``alias`` (``version``, ``run_id``, ``tags``...), or None when no version has it."""
        model = self.get_registered_model(name)
        version = next((a["version"] for a in (model or {}).get("aliases") or [] if a.get("alias") == alias), None)
        return None if version is None else self.get_model_version(name, str(version))

    def get_model_version(self, name: str, version: str) -> dict[str, Any]:
        return dict(self.call("GET", "model-versions/get", params={"name": name, "version": version})["model_version"])

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version`` (moving it from the version that had it).

        MLflow's SQL store reads, then inserts a new alias: two callers setting a free alias at once break its
        unique key, and the second gets HTTP 400. That set is sent again (at most twice more); it then finds
        the alias and moves it."""
        body = {"name": name, "alias": alias, "version": version}
        for attempt in range(1, ALIAS_SET_ATTEMPTS + 1):
            try:
                self.call("POST", "registered-models/alias", json=body)
                return
            except RayTrainMlflowError as exc:
                raced = exc.http_status == 400 and any(sign in (exc.reason or "") for sign in RACED_INSERT_SIGNS)
                if not raced or attempt == ALIAS_SET_ATTEMPTS:
                    raise
                self.log.info("Setting alias %r of %r raced another set; sending it again.", alias, name)

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        body = {"name": name, "version": version, "key": key, "value": value}
        self.call("POST", "model-versions/set-tag", json=body)

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None:
        """Remove the tag ``key`` from the version; a tag that is not there is fine."""
        body = {"name": name, "version": version, "key": key}
        self.call("DELETE", "model-versions/delete-tag", json=body, allow=("RESOURCE_DOES_NOT_EXIST",))

    def search_model_versions(self, name: str, *, page_size: int = 1000) -> list[dict[str, Any]]:
        """Every version of the registered model ``name`` (with its ``tags`` and ``aliases``), oldest first,
        read page by page. Ordered by version number: MLflow pages by offset, and its default order (last
        update first) would shift a version to another page when its tags change between two pages."""
        quote = '"' if "'" in name else "'"
        params: dict[str, Any] = {
            "filter": f"name={quote}{name}{quote}",
            "max_results": page_size,
            "order_by": ["version_number ASC"],
        }
        versions: list[dict[str, Any]] = []
        while True:
            page = self.call("GET", "model-versions/search", params=params)
            versions.extend(page.get("model_versions") or [])
            if not page.get("next_page_token"):
                return versions
            params["page_token"] = page["next_page_token"]


def mlflow_hook(mlflow_conn_id: str | None = None) -> MlflowHook | None:
    """The MLflow a task tracks to: ``mlflow_conn_id`` (an empty string: none), else ``[ray_train]
    mlflow_conn_id``, else ``[ray_train] mlflow_tracking_uri``; None when none is set (untracked)."""
    if mlflow_conn_id is not None:
        return MlflowHook(mlflow_conn_id) if mlflow_conn_id else None
    configured = str(ray_train_setting("mlflow_conn_id"))
    if configured:
        return MlflowHook(configured)
    uri = str(ray_train_setting("mlflow_tracking_uri"))
    return MlflowHook(None, tracking_uri=uri) if uri else None
