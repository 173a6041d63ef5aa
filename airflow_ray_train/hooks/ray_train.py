"""``RayTrainHook``: the Ray Jobs REST API for a worker (httpx, and websockets for the log stream). No ``ray``
import: Airflow does not need Ray installed.

Thin: where the cluster is comes from ``settings``; the API's paths, replies, job records, retry policy and
errors from ``jobs_api``; what to do while a job is watched from ``watch.Watch`` (``wait_for_job`` only carries
its steps out, as ``AsyncRayTrainHook`` does in the triggerer); shipping code from ``shipping.CodeShipping``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx

from airflow_ray_train.compat import AirflowNotFoundException, mask_secret
from airflow_ray_train.connection_form import UI_FIELD_BEHAVIOUR
from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainClusterError, RayTrainJobExistsError
from airflow_ray_train.hooks import jobs_api
from airflow_ray_train.hooks.base import JobsApiHook
from airflow_ray_train.hooks.jobs_api import Attempts, JobInfo, Reply, send_with_retries
from airflow_ray_train.hooks.log_follower import READ_CHUNK_BYTES, LogFollower, LogReader
from airflow_ray_train.hooks.settings import DEFAULT_CONN_ID, ClusterSettings, settings_from_connection
from airflow_ray_train.hooks.shipping import CodeShipping
from airflow_ray_train.hooks.watch import (
    HEARTBEAT_S,
    MAX_MESSAGE_BYTES,
    POLL_INTERVAL_S,
    STREAM_CLOSE_TIMEOUT_S,
    Do,
    OnLines,
    Stopping,
    Watch,
    contact_window,
)

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection as LogStream

#: A stop after a rejected token: tries, each after reading the connection again, this many seconds apart.
REJECTED_STOP_TRIES = 4
REJECTED_STOP_PAUSE_S = 10.0


class RayTrainHook(CodeShipping, JobsApiHook):
    """Submit, watch, read and stop Ray jobs through the Ray Jobs REST API (the parameters: ``JobsApiHook``)."""

    hook_name = "Ray Train"

    def __init__(self, ray_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(ray_conn_id, **kwargs)
        self.bytes_uploaded = 0

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return UI_FIELD_BEHAVIOUR

    # -- where the cluster is -------------------------------------------------------------------------------

    def _resolve_settings(self, *, start_embedded: bool = False) -> ClusterSettings:
        try:
            conn = self.get_connection(self.ray_conn_id)
        except AirflowNotFoundException:
            return settings_from_connection(None, {}, self.ray_conn_id, start_embedded=start_embedded)
        extras = conn.extra_dejson or {}
        settings = settings_from_connection(conn, extras, self.ray_conn_id, start_embedded=start_embedded)
        for value in settings.headers.values():
            mask_secret(value)
        return settings

    @cached_property
    def settings(self) -> ClusterSettings:
        """Where the cluster is, from the connection. With no connection (or host ``local``) this looks up
        the embedded head and fails if none runs: ``ensure_embedded_head`` is what starts it."""
        return self._resolve_settings()

    def ensure_embedded_head(self) -> None:
        """Start the embedded local head when the connection asks for it (no connection, or host ``local``)
        and none runs; nothing for a remote cluster. Only the process that runs a task calls this."""
        if "settings" not in self.__dict__:
            self.__dict__["settings"] = self._resolve_settings(start_embedded=True)

    def reload_settings(self) -> None:
        """Read the connection again (its token may have been rotated) and open a new HTTP client."""
        self.close()
        self.__dict__.pop("settings", None)

    # -- HTTP -----------------------------------------------------------------------------------------------

    @cached_property
    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.settings.address,
            headers=self.settings.http_headers,
            verify=self.settings.verify,
            timeout=self.timeout,
        )

    def get_conn(self) -> httpx.Client:
        return self.client

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Reply:
        attempts = Attempts(self.retry_policy, self.settings, self.ray_conn_id, path)

        def send() -> tuple[Reply, Reply]:
            response = self.client.request(method, path, **kwargs)
            reply = Reply(response.status_code, response.text)
            return reply, reply

        def reload() -> None:
            self.reload_settings()
            attempts.settings = self.settings

        return send_with_retries(
            attempts,
            send,
            ok=ok,
            transport_errors=(httpx.TransportError,),
            reload=reload,
            log=self.log,
            what=f"The Ray cluster ({path}, connection {self.ray_conn_id!r})",
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self._request(method, path, **kwargs)
        if reply.status_code != 200:
            raise jobs_api.http_error(self.settings, method, path, reply)
        return reply.json()

    # -- Jobs API -------------------------------------------------------------------------------------------

    def get_version(self) -> dict[str, Any]:
        return dict(self._json("GET", jobs_api.VERSION))

    def test_connection(self) -> tuple[bool, str]:
        try:
            version = self.get_version()
        except Exception as exc:  # noqa: BLE001 - the UI shows the message
            return False, str(exc)
        return True, f"Connected to Ray {version.get('ray_version')} at {self.settings.address}"

    def submit_job(self, *, entrypoint: str, submission_id: str, **optional: Any) -> str:
        """Submit a job; returns its submission id. ``optional``: ``runtime_env``, ``metadata`` and the
        ``entrypoint_*`` resources. Raises ``RayTrainJobExistsError`` when the id is taken, else
        ``RayTrainClusterError`` on rejection."""
        body = jobs_api.submit_body(entrypoint, submission_id, **optional)
        try:
            return str(self._json("POST", jobs_api.JOBS, json=body)["submission_id"])
        except RayTrainAuthError:
            raise
        except RayTrainClusterError as exc:
            # Ray answers a taken id with a 500 and a traceback; whether the id names a job says it for sure.
            existing = self.find_job(submission_id)
            if existing is None:
                raise
            raise RayTrainJobExistsError(
                f"Ray job {submission_id} already exists ({existing.status})", job=existing
            ) from exc

    def get_job_info(self, job_id: str) -> JobInfo:
        return JobInfo.from_api(self._json("GET", jobs_api.job_path(job_id)))

    def find_job(self, job_id: str) -> JobInfo | None:
        """The job's details, or None if the cluster has no such job."""
        reply = self._request("GET", jobs_api.job_path(job_id), ok=(200, 404))
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise jobs_api.http_error(self.settings, "GET", jobs_api.job_path(job_id), reply)
        return JobInfo.from_api(reply.json())

    def find_jobs(self, submission_ids: Sequence[str]) -> list[JobInfo]:
        """The details of the jobs the cluster has under ``submission_ids`` and their resubmits (``<id>-2``,
        ``<id>-3`` ...), newest first within each id, in the order of ``submission_ids``."""
        found: list[JobInfo] = []
        for submission_id in submission_ids:
            chain: list[JobInfo] = []
            candidate = submission_id
            while (info := self.find_job(candidate)) is not None:
                chain.append(info)
                candidate = f"{submission_id}-{len(chain) + 1}"
            found.extend(reversed(chain))
        return found

    def get_job_status(self, job_id: str) -> str:
        return str(self.get_job_info(job_id).status)

    def get_job_logs(self, job_id: str) -> str:
        return str(self._json("GET", jobs_api.job_path(job_id, "logs")).get("logs") or "")

    def stop_job(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL after 3 s). Returns whether it was running."""
        return bool(self._json("POST", jobs_api.job_path(job_id, "stop")).get("stopped"))

    def stop_job_and_wait(self, job_id: str, timeout: float | None = None) -> str:
        """Stop the job and wait until Ray reports it terminal (or ``timeout`` passes, by default the job's own
        ``JobInfo.stop_timeout_s``); returns its status."""
        self.stop_job(job_id)
        info = self.get_job_info(job_id)
        stopping = Stopping(info.stop_timeout_s if timeout is None else timeout)
        while (pause := stopping.pause(info.status)) is not None:
            time.sleep(pause)
            info = self.get_job_info(job_id)
        return str(info.status)

    def stop_after_rejection(self, job_id: str, tries: int = REJECTED_STOP_TRIES) -> str:
        """Stop a job after the cluster rejected the token: read the connection again before each try (a token
        rotated on the cluster is often stored in Airflow a moment later), ``REJECTED_STOP_PAUSE_S`` apart."""
        for attempt in range(1, tries + 1):
            self.reload_settings()
            try:
                return self.stop_job_and_wait(job_id)
            except RayTrainAuthError:
                if attempt == tries:
                    raise
                self.log.warning(
                    "The Ray cluster still rejects connection %r's token; reading it again in %.0f s (%d/%d)",
                    self.ray_conn_id,
                    REJECTED_STOP_PAUSE_S,
                    attempt,
                    tries,
                )
                time.sleep(REJECTED_STOP_PAUSE_S)
        raise AssertionError("unreachable")

    def how_to_stop(self, job_id: str) -> str:
        """What runs on, unwatched, and how to stop it, in one sentence for the task log."""
        return (
            f"Ray job {job_id} may still be running on {self.settings.address}, with nobody watching it: stop it "
            f"from its dashboard page ({self.dashboard_url(job_id)}) or with `ray job stop {job_id} --address "
            f"{self.settings.address}` (with RAY_AUTH_TOKEN set to the cluster's token where it has one)."
        )

    def list_jobs(self) -> list[JobInfo]:
        """Every job the cluster knows."""
        return [JobInfo.from_api(job) for job in self._json("GET", jobs_api.JOBS)]

    def get_cluster_nodes(self) -> list[dict[str, Any]] | None:
        """Total resources of each alive node, or None where the cluster does not serve the state API."""
        reply = self._request("GET", jobs_api.NODES, params={"detail": "1", "limit": "10000"})
        if reply.status_code != 200:
            return None
        try:
            return jobs_api.alive_nodes(reply.json())
        except ValueError:
            return None

    def dashboard_url(self, job_id: str) -> str:
        return self.settings.dashboard_url(job_id)

    # -- watching a job: the sync driver of ``watch.Watch`` ------------------------------------------------

    def wait_for_job(
        self,
        job_id: str,
        *,
        follower: LogFollower | None = None,
        on_lines: OnLines = lambda lines: None,
        poll_interval: float = POLL_INTERVAL_S,
        deadline: float | None = None,
        window: float | None = None,
    ) -> JobInfo:
        """Watch the job until it ended, or the Unix time ``deadline`` passed (then its record says it still
        runs), handing each batch of new log lines to ``on_lines`` (``follower`` keeps the place in the log and
        sees the manifest). A cluster that does not answer is waited for over ``window`` seconds (default:
        ``[ray_train] contact_window``), then ``watch.ContactLost`` is raised."""
        follower = follower or LogFollower()
        window = contact_window() if window is None else window
        watch = Watch(
            job_id, follower, poll_interval=poll_interval, deadline=deadline, contact_window=window, log=self.log
        )
        with contextlib.ExitStack() as streams:
            stream: LogStream | None = None
            while True:
                step = watch.next()
                if step.do is Do.OPEN_STREAM:
                    stream = self.open_log_stream(job_id, streams)
                    watch.stream_opened() if stream is not None else watch.stream_refused()
                elif step.do is Do.READ_STREAM:
                    if stream is None:  # never: the watch reads only a stream it was told opened
                        watch.stream_closed(None)
                    else:
                        stream = self._read_stream(stream, watch, on_lines)
                elif step.do is Do.POLL:
                    self._poll(job_id, watch)
                elif step.do is Do.FETCH_LOG:
                    self._fetch_log(job_id, watch, on_lines)
                elif step.do is Do.SLEEP:
                    time.sleep(step.seconds)
                elif step.do is Do.GIVE_UP and watch.error is not None:
                    raise watch.error
                elif step.do is Do.RETURN and watch.info is not None:
                    on_lines(follower.flush() if watch.ended() else [])
                    return watch.info

    def _poll(self, job_id: str, watch: Watch) -> None:
        try:
            info = self.get_job_info(job_id)
        except RayTrainClusterError as exc:
            watch.poll_failed(exc)
        else:
            watch.polled(info)

    def _fetch_log(self, job_id: str, watch: Watch, on_lines: OnLines) -> None:
        try:
            reader = self.read_log(job_id, watch.follower, on_lines)
        except RayTrainClusterError as exc:
            watch.log_failed(exc)
        else:
            watch.log_read(reader)

    def read_log(self, job_id: str, follower: LogFollower, on_lines: OnLines = lambda lines: None) -> LogReader:
        """Read the job's whole log (``GET /logs``) in bounded pieces, handing the lines not shown yet to
        ``on_lines``; never holds the whole log."""
        reader = LogReader(follower)
        path = jobs_api.job_path(job_id, "logs")
        try:
            with self.client.stream("GET", path) as response:
                if response.status_code != 200:
                    response.read()
                    raise jobs_api.http_error(self.settings, "GET", path, Reply(response.status_code, response.text))
                for data in response.iter_bytes(READ_CHUNK_BYTES):
                    on_lines(reader.feed(data))
        except httpx.TransportError as exc:
            raise jobs_api.unreachable_error(self.settings, self.ray_conn_id, exc, 1) from exc
        return reader

    def open_log_stream(self, job_id: str, streams: contextlib.ExitStack) -> LogStream | None:
        """The websocket following the job's log, closed with ``streams``; None where it cannot be opened
        (then the watch falls back)."""
        from websockets.sync.client import connect

        try:
            stream: LogStream = streams.enter_context(
                connect(
                    jobs_api.log_stream_url(self.settings.address, job_id),
                    additional_headers=self.settings.http_headers,
                    ssl=self.settings.ssl_context(),
                    open_timeout=self.timeout,
                    close_timeout=STREAM_CLOSE_TIMEOUT_S,
                    compression=None,  # Ray's dashboard proxy drops a compressed stream (ERROR, then close)
                    max_size=MAX_MESSAGE_BYTES,
                    ping_interval=HEARTBEAT_S,
                    ping_timeout=3 * HEARTBEAT_S,  # a busy head answers late; a reconnect follows a timeout anyway
                )
            )
        except Exception as exc:  # noqa: BLE001 - the watch falls back: say so and go on
            self.log.info("No log stream for Ray job %s (%s)", job_id, exc)
            return None
        return stream

    def _read_stream(self, stream: LogStream, watch: Watch, on_lines: OnLines) -> LogStream | None:
        """Hand the stream's messages to the watch while it says to read. Returns the stream, or None once it
        closed."""
        from websockets.exceptions import ConnectionClosed

        while (left := watch.read_left()) > 0:
            try:
                message = stream.recv(timeout=left)
            except TimeoutError:
                break
            except ConnectionClosed as exc:
                watch.stream_closed(close_code(exc))
                return None
            on_lines(watch.feed(message))
        return stream


def close_code(exc: Any) -> int | None:
    """The code of a closed websocket (``ConnectionClosed``): the one received, else the one sent."""
    frame = exc.rcvd or exc.sent
    return None if frame is None else int(frame.code)


from airflow_ray_train.hooks.ray_train_async import AsyncRayTrainHook  # noqa: E402 - re-exported

__all__ = ["AsyncRayTrainHook", "RayTrainHook"]
