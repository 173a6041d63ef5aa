"""``RayTrainHook`` and ``AsyncRayTrainHook``: the Ray Jobs REST API, sync (httpx, websockets) for the worker
and async (aiohttp) for the triggerer. No ``ray`` import: Airflow does not need Ray installed.

Both are thin: where the cluster is comes from ``settings``, the API's paths, replies, retry policy and errors
from ``jobs_api``, following a job's log from ``log_follower``. Waiting for a job (``wait_for_job`` on both)
follows the job's log over the Jobs API's websocket (``/api/jobs/{id}/logs/tail``): new lines arrive as Ray
writes them, and the job's last line, the result manifest, or the stream closing says the job is ending, so
the status is then polled every ``FINISHING_POLL_INTERVAL``. While the stream is open the status poll is only a
backstop (at least ``STREAM_POLL_INTERVAL`` apart); where the stream cannot be opened (a proxy without
websockets), the whole log is fetched with every status poll, every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from airflow.sdk import Connection

from airflow_ray_train.compat import (
    AirflowNotFoundException,
    BaseHook,
    aextra_dejson,
    aget_connection,
    amask_secret,
    mask_secret,
)
from airflow_ray_train.connection_form import UI_FIELD_BEHAVIOUR
from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainClusterError, RayTrainJobExistsError
from airflow_ray_train.hooks import jobs_api
from airflow_ray_train.hooks.jobs_api import Attempts, Reply, RetryPolicy, Step, send_with_retries
from airflow_ray_train.hooks.log_follower import HEARTBEAT_S, MAX_MESSAGE_BYTES, STREAM_CLOSE_TIMEOUT_S, LogFollower
from airflow_ray_train.hooks.settings import DEFAULT_CONN_ID, ClusterSettings, settings_from_connection
from airflow_ray_train.packaging import Package, runtime_package
from airflow_ray_train.runtime.spec import JobStatus
from airflow_ray_train.runtime_env import merge_runtime_env, with_py_modules

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection as LogStream

#: Called with each batch of new whole log lines while a job is watched.
OnLines = Callable[[list[str]], None]
#: The websocket close code of a message over the size cap.
MESSAGE_TOO_BIG = 1009


class RayTrainHook(BaseHook):
    """Submit, watch, read and stop Ray jobs through the Ray Jobs REST API.

    :param ray_conn_id: the ``ray_train`` connection; missing (or host ``local``) means the embedded head.
    :param timeout: seconds per HTTP request.
    :param max_retries: retries, with exponential backoff, when the cluster cannot be reached.
    :param retry_backoff: seconds before the first retry; doubles each time.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "ray_train"
    hook_name = "Ray Train"

    def __init__(
        self,
        ray_conn_id: str = default_conn_name,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries=max_retries, backoff=retry_backoff)
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
                f"Ray job {submission_id} already exists ({existing.get('status')})", job=existing
            ) from exc

    def get_job_info(self, job_id: str) -> dict[str, Any]:
        return jobs_api.job_details(self._json("GET", jobs_api.job_path(job_id)))

    def find_job(self, job_id: str) -> dict[str, Any] | None:
        """The job's details, or None if the cluster has no such job."""
        reply = self._request("GET", jobs_api.job_path(job_id), ok=(200, 404))
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise jobs_api.http_error(self.settings, "GET", jobs_api.job_path(job_id), reply)
        return jobs_api.job_details(reply.json())

    def find_jobs(self, submission_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The details of the jobs the cluster has under ``submission_ids`` and their resubmits (``<id>-2``,
        ``<id>-3`` ...), newest first within each id, in the order of ``submission_ids``."""
        found: list[dict[str, Any]] = []
        for submission_id in submission_ids:
            chain: list[dict[str, Any]] = []
            candidate = submission_id
            while (info := self.find_job(candidate)) is not None:
                chain.append(info)
                candidate = f"{submission_id}-{len(chain) + 1}"
            found.extend(reversed(chain))
        return found

    def get_job_status(self, job_id: str) -> str:
        return str(self.get_job_info(job_id)["status"])

    def get_job_logs(self, job_id: str) -> str:
        return str(self._json("GET", jobs_api.job_path(job_id, "logs")).get("logs") or "")

    def stop_job(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL after 3 s). Returns whether it was running."""
        return bool(self._json("POST", jobs_api.job_path(job_id, "stop")).get("stopped"))

    def stop_job_and_wait(self, job_id: str, timeout: float = jobs_api.STOP_TIMEOUT_S) -> str:
        """Stop the job and wait until Ray reports it terminal (or ``timeout`` passes); returns its status."""
        self.stop_job(job_id)
        deadline = time.monotonic() + timeout
        status = self.get_job_status(job_id)
        while not JobStatus.ended(status) and time.monotonic() < deadline:
            time.sleep(jobs_api.STOP_POLL_S)
            status = self.get_job_status(job_id)
        return status

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job the cluster knows."""
        return [jobs_api.job_details(job) for job in self._json("GET", jobs_api.JOBS)]

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

    # -- watching a job -------------------------------------------------------------------------------------

    def open_log_stream(self, job_id: str, streams: contextlib.ExitStack) -> LogStream | None:
        """The websocket following the job's log, closed with ``streams``; None where it cannot be opened
        (then callers poll)."""
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
        except Exception as exc:  # noqa: BLE001 - polling still works: say so and go on
            self.log.info("No log stream for Ray job %s (%s); polling its log instead", job_id, exc)
            return None
        return stream

    def _open(self, job_id: str, follower: LogFollower, streams: contextlib.ExitStack) -> LogStream | None:
        stream = self.open_log_stream(job_id, streams)
        if stream is None:
            follower.failed_to_open()
        else:
            follower.opened()
        return stream

    def wait_for_job(
        self,
        job_id: str,
        *,
        follower: LogFollower | None = None,
        on_lines: OnLines = lambda lines: None,
        poll_interval: float = 5.0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait until the job is terminal, handing each batch of new log lines to ``on_lines`` as it comes
        (``follower`` keeps the place in the log and sees the manifest).

        Follows the log stream between status polls (see the module doc), opening it again when it drops.
        Returns the final job details. Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        follower = follower or LogFollower()
        deadline = None if timeout is None else time.monotonic() + timeout
        with contextlib.ExitStack() as streams:
            stream = self._open(job_id, follower, streams)
            while True:
                info = self.get_job_info(job_id)
                if JobStatus.ended(info["status"]):
                    on_lines(follower.catch_up(self.get_job_logs(job_id)) + follower.flush())
                    return info
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {info['status']} after {timeout} s")
                wait = follower.next_poll(poll_interval, streaming=stream is not None)
                if stream is None and follower.reconnect_due(poll_interval):
                    stream = self._open(job_id, follower, streams)
                if stream is not None:
                    stream = self._follow(stream, follower, on_lines, wait)
                    continue
                if follower.polling:
                    on_lines(follower.catch_up(self.get_job_logs(job_id)))
                time.sleep(wait)

    def _follow(self, stream: LogStream, follower: LogFollower, on_lines: OnLines, wait: float) -> LogStream | None:
        """Read the stream for up to ``wait`` seconds; back early when the job starts finishing. Returns the
        stream, or None once it closed."""
        from websockets.exceptions import ConnectionClosed

        was_finishing = follower.finishing
        until = time.monotonic() + wait
        while (left := until - time.monotonic()) > 0:
            try:
                message = stream.recv(timeout=left)
            except TimeoutError:
                break
            except ConnectionClosed as exc:
                frames = (exc.rcvd, exc.sent)
                follower.closed(too_big=any(f is not None and f.code == MESSAGE_TOO_BIG for f in frames))
                return None
            on_lines(follower.feed(message))
            if follower.finishing and not was_finishing:
                break
        return stream

    # -- shipping code --------------------------------------------------------------------------------------

    def package_exists(self, package: Package) -> bool:
        reply = self._request("GET", jobs_api.package_path(package.name), ok=(200, 404))
        if reply.status_code not in (200, 404):
            raise jobs_api.http_error(self.settings, "GET", jobs_api.package_path(package.name), reply)
        return reply.status_code == 200

    def upload_package(self, package: Package) -> int:
        """Upload ``package`` unless the cluster has it already (same bytes, same name). Returns bytes sent."""
        if self.package_exists(package):
            return 0
        path = jobs_api.package_path(package.name)
        headers = {"Content-Length": str(package.size)}
        reply = self._request("PUT", path, content=package.chunks(), headers=headers)
        if reply.status_code != 200:
            raise jobs_api.http_error(self.settings, "PUT", path, reply)
        self.bytes_uploaded += package.size
        self.log.info("Uploaded %s (%d bytes) as %s", package.source, package.size, package.uri)
        return package.size

    def upload_packages(self, packages: Sequence[Package]) -> int:
        """Upload each package the cluster does not have yet; returns the bytes sent."""
        return sum(self.upload_package(package) for package in packages)

    def job_runtime_env(
        self, runtime_env: dict[str, Any] | None, packages: Sequence[Package] = ()
    ) -> tuple[dict[str, Any], list[Package]]:
        """The job's ``runtime_env`` (the task's over the connection's default) with ``py_modules`` holding the
        runtime package and ``packages``, and the packages to upload for it. Uploads nothing."""
        shipped = list({p.uri: p for p in (runtime_package(), *packages)}.values())
        env = merge_runtime_env(self.settings.runtime_env, runtime_env)
        return with_py_modules(env, [p.uri for p in shipped]), shipped

    def build_runtime_env(
        self, runtime_env: dict[str, Any] | None, *, packages: Sequence[Package] = ()
    ) -> dict[str, Any]:
        """``job_runtime_env``, with its packages uploaded."""
        env, shipped = self.job_runtime_env(runtime_env, packages)
        self.upload_packages(shipped)
        return env

    def runtime_entrypoint(self, spec_arg: str) -> str:
        """The job's entrypoint: the runtime driver under the cluster's interpreter."""
        return f"{shlex.quote(self.settings.python)} -m airflow_ray_train.runtime {shlex.quote(spec_arg)}"


#: Log streams one process (a triggerer) holds open to one Ray cluster at most, unless ``[ray_train]
#: max_log_streams`` says otherwise. Ray's dashboard proxies each stream through aiohttp sessions with the default
#: pool of 100 connections (dashboard -> its job module -> the node's agent): with 100 streams open, every other
#: Jobs API call to that head (status, submit, stop) waits until one closes.
MAX_LOG_STREAMS = 50


class StreamSlots:
    """How many log streams this process has open, per Ray cluster (its address). Triggers share one event loop,
    so plain counters do."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def take(self, cluster: str, limit: int) -> bool:
        if self._open.get(cluster, 0) >= limit:
            return False
        self._open[cluster] = self._open.get(cluster, 0) + 1
        return True

    def give(self, cluster: str) -> None:
        self._open[cluster] = max(0, self._open.get(cluster, 0) - 1)

    def count(self, cluster: str) -> int:
        return self._open.get(cluster, 0)


STREAM_SLOTS = StreamSlots()


def max_log_streams() -> int:
    from airflow.configuration import conf

    return conf.getint("ray_train", "max_log_streams", fallback=MAX_LOG_STREAMS)


class AsyncRayTrainHook(BaseHook):
    """The async twin of ``RayTrainHook``'s watch-and-stop calls, for the triggerer's event loop.

    Every call awaits: the connection comes from ``aget_connection``, HTTP (and the log stream's websocket)
    from one ``aiohttp.ClientSession``, backoff from ``asyncio.sleep``; only the embedded head's lookup (a
    file read) runs in a thread. aiohttp, not httpx, because a triggerer polls for many jobs at once: a status
    poll costs it about a third of the CPU (see bench/REPORT.md, scale).

    :param ray_conn_id: the ``ray_train`` connection; missing (or host ``local``) means the embedded head.
    :param timeout: seconds per HTTP request.
    :param max_retries: retries, with exponential backoff, when the cluster cannot be reached.
    :param retry_backoff: seconds before the first retry; doubles each time.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "ray_train"
    hook_name = "Ray Train (async)"

    def __init__(
        self,
        ray_conn_id: str = default_conn_name,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries=max_retries, backoff=retry_backoff)
        self._settings: ClusterSettings | None = None
        self._session: aiohttp.ClientSession | None = None

    async def get_settings(self) -> ClusterSettings:
        if self._settings is None:
            try:
                conn: Connection | None = await aget_connection(self, self.ray_conn_id)
            except AirflowNotFoundException:
                conn = None
            extras = await aextra_dejson(conn) if conn is not None else {}
            settings = await asyncio.to_thread(settings_from_connection, conn, extras or {}, self.ray_conn_id)
            for value in settings.headers.values():
                await amask_secret(value)
            self._settings = settings
        return self._settings

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            settings = await self.get_settings()
            self._session = aiohttp.ClientSession(
                headers=settings.http_headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=settings.ssl_context() or True),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,)) -> Reply:
        attempts = Attempts(self.retry_policy, await self.get_settings(), self.ray_conn_id, path)
        while True:
            session = await self.session()
            try:
                async with session.request(method, attempts.settings.address + path) as response:
                    reply = Reply(response.status, await response.text())
                step = attempts.answered(reply, ok)
            except (aiohttp.ClientError, TimeoutError) as exc:
                step = attempts.failed(exc)
            if step is Step.RETURN:
                return reply
            if step is Step.GIVE_UP and attempts.error is not None:
                raise attempts.error
            if step is Step.RELOAD:
                self.log.warning("The Ray cluster rejected the token; reading connection %r again", self.ray_conn_id)
                await self.aclose()
                self._settings = None
                attempts.settings = await self.get_settings()
                continue
            self.log.warning(
                "Ray cluster %s not ready (attempt %d), retrying in %.1f s", path, attempts.attempt, attempts.delay
            )
            await asyncio.sleep(attempts.delay)

    async def _json(self, method: str, path: str) -> Any:
        reply = await self._request(method, path)
        if reply.status_code != 200:
            raise jobs_api.http_error(await self.get_settings(), method, path, reply)
        return reply.json()

    async def get_job_info(self, job_id: str) -> dict[str, Any]:
        return jobs_api.job_details(await self._json("GET", jobs_api.job_path(job_id)))

    async def get_job_status(self, job_id: str) -> str:
        return str((await self.get_job_info(job_id))["status"])

    async def get_job_logs(self, job_id: str) -> str:
        return str((await self._json("GET", jobs_api.job_path(job_id, "logs"))).get("logs") or "")

    async def stop_job(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL after 3 s). Returns whether it was running."""
        return bool((await self._json("POST", jobs_api.job_path(job_id, "stop"))).get("stopped"))

    async def stop_job_and_wait(self, job_id: str, timeout: float = jobs_api.STOP_TIMEOUT_S) -> str:
        """Stop the job and wait until Ray reports it terminal (or ``timeout`` passes); returns its status."""
        await self.stop_job(job_id)
        deadline = time.monotonic() + timeout
        status = await self.get_job_status(job_id)
        while not JobStatus.ended(status) and time.monotonic() < deadline:
            await asyncio.sleep(jobs_api.STOP_POLL_S)
            status = await self.get_job_status(job_id)
        return status

    async def open_log_stream(self, job_id: str) -> aiohttp.ClientWebSocketResponse | None:
        """The websocket following the job's log, or None where it cannot be opened (then callers poll)."""
        session = await self.session()
        settings = await self.get_settings()
        try:
            # No receive timeout: the stream is quiet while the job prints nothing; the heartbeat keeps it up.
            return await session.ws_connect(
                jobs_api.log_stream_url(settings.address, job_id),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=STREAM_CLOSE_TIMEOUT_S),
                max_msg_size=MAX_MESSAGE_BYTES,
                heartbeat=HEARTBEAT_S,
            )
        except Exception as exc:  # noqa: BLE001 - polling still works: say so and go on
            self.log.info("No log stream for Ray job %s (%s); polling its log instead", job_id, exc)
            return None

    async def _open(self, job_id: str, follower: LogFollower) -> aiohttp.ClientWebSocketResponse | None:
        """The job's log stream, if a slot to this cluster is free (``max_log_streams``) and it opens."""
        cluster = (await self.get_settings()).address
        limit = max_log_streams()
        if not STREAM_SLOTS.take(cluster, limit):
            if not follower.waiting_for_slot:
                self.log.info(
                    "%d log streams to this Ray cluster are open here ([ray_train] max_log_streams): following "
                    "job %s by its status every poll_interval; its log comes when a stream frees or at the end",
                    STREAM_SLOTS.count(cluster),
                    job_id,
                )
            follower.no_slot()
            return None
        try:
            stream = await self.open_log_stream(job_id)
        except BaseException:  # cancelled (the task was killed or cleared): the slot is not lost to the triggerer
            STREAM_SLOTS.give(cluster)
            raise
        if stream is None:
            STREAM_SLOTS.give(cluster)
            follower.failed_to_open()
        else:
            follower.opened()
        return stream

    async def _close(self, stream: aiohttp.ClientWebSocketResponse) -> None:
        cluster = (await self.get_settings()).address  # cached since ``_open``: it does not suspend
        try:
            await stream.close()
        finally:
            STREAM_SLOTS.give(cluster)

    async def wait_for_job(
        self,
        job_id: str,
        *,
        follower: LogFollower,
        on_lines: OnLines,
        poll_interval: float = 5.0,
        deadline: float | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Wait until the job is terminal or the Unix time ``deadline`` passes (then its details say it still
        runs), handing each batch of new log lines to ``on_lines``; ``on_status`` hears each new status."""
        stream = await self._open(job_id, follower)
        status = None
        try:
            while True:
                info = await self.get_job_info(job_id)
                if info["status"] != status and on_status is not None:
                    on_status(status := info["status"])
                if JobStatus.ended(info["status"]):
                    on_lines(follower.catch_up(await self.get_job_logs(job_id)) + follower.flush())
                    return info
                if deadline is not None and time.time() >= deadline:
                    return info
                wait = follower.next_poll(poll_interval, streaming=stream is not None)
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.time()))
                if stream is None and (follower.reconnect_due(poll_interval) or follower.waiting_for_slot):
                    stream = await self._open(job_id, follower)
                if stream is not None:
                    stream = await self._follow(stream, follower, on_lines, wait)
                    continue
                if follower.polling:
                    on_lines(follower.catch_up(await self.get_job_logs(job_id)))
                await asyncio.sleep(wait)
        finally:
            if stream is not None:
                await self._close(stream)

    async def _follow(
        self, stream: aiohttp.ClientWebSocketResponse, follower: LogFollower, on_lines: OnLines, wait: float
    ) -> aiohttp.ClientWebSocketResponse | None:
        """Read the stream for up to ``wait`` seconds; back early when the job starts finishing. Returns the
        stream, or None once it closed."""
        was_finishing = follower.finishing
        until = time.monotonic() + wait
        while (left := until - time.monotonic()) > 0:
            try:
                message = await stream.receive(timeout=left)
            except TimeoutError:
                break
            if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                # Ray closes the stream once the job ended; a proxy or the network may drop it before.
                too_big = stream.close_code == MESSAGE_TOO_BIG
                await self._close(stream)
                follower.closed(too_big=too_big)
                return None
            on_lines(follower.feed(message.data))
            if follower.finishing and not was_finishing:
                break
        return stream
