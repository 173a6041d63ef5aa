"""``AsyncRayTrainHook``: the Ray Jobs REST API for the triggerer's event loop (aiohttp, its websocket for the log
stream), with the same job records, retry policy and errors as ``RayTrainHook`` (``jobs_api``) and the same watch
decisions (``watch.Watch``): ``wait_for_job`` only carries them out.

Every call awaits: the connection comes from ``aget_connection``, HTTP from one ``aiohttp.ClientSession``, backoff
from ``asyncio.sleep``; only the embedded head's lookup (a file read) runs in a thread. aiohttp, not httpx,
because a triggerer polls for many jobs at once: a status poll costs it about a third of the CPU (see
bench/REPORT.md, scale).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from airflow.sdk import Connection

from airflow_ray_train.compat import AirflowNotFoundException, aextra_dejson, aget_connection, amask_secret
from airflow_ray_train.exceptions import RayTrainClusterError
from airflow_ray_train.hooks import jobs_api
from airflow_ray_train.hooks.base import JobsApiHook
from airflow_ray_train.hooks.jobs_api import Attempts, JobInfo, Reply, Step
from airflow_ray_train.hooks.log_follower import READ_CHUNK_BYTES, LogFollower, LogReader
from airflow_ray_train.hooks.settings import DEFAULT_CONN_ID, ClusterSettings, settings_from_connection
from airflow_ray_train.hooks.watch import (
    HEARTBEAT_S,
    MAX_MESSAGE_BYTES,
    POLL_INTERVAL_S,
    STREAM_CLOSE_TIMEOUT_S,
    STREAM_SLOTS,
    Do,
    OnLines,
    Stopping,
    Watch,
    contact_window,
    max_log_streams,
)

Stream = aiohttp.ClientWebSocketResponse


class AsyncRayTrainHook(JobsApiHook):
    """The async twin of ``RayTrainHook``'s watch-and-stop calls, for the triggerer's event loop (the
    parameters: ``JobsApiHook``)."""

    hook_name = "Ray Train (async)"

    def __init__(self, ray_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(ray_conn_id, **kwargs)
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

    async def get_job_info(self, job_id: str) -> JobInfo:
        return JobInfo.from_api(await self._json("GET", jobs_api.job_path(job_id)))

    async def get_job_status(self, job_id: str) -> str:
        return str((await self.get_job_info(job_id)).status)

    async def stop_job(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL after 3 s). Returns whether it was running."""
        return bool((await self._json("POST", jobs_api.job_path(job_id, "stop"))).get("stopped"))

    async def stop_job_and_wait(self, job_id: str, timeout: float | None = None) -> str:
        """Stop the job and wait until Ray reports it terminal (or ``timeout`` passes, by default the job's own
        ``JobInfo.stop_timeout_s``); returns its status."""
        await self.stop_job(job_id)
        info = await self.get_job_info(job_id)
        stopping = Stopping(info.stop_timeout_s if timeout is None else timeout)
        while (pause := stopping.pause(info.status)) is not None:
            await asyncio.sleep(pause)
            info = await self.get_job_info(job_id)
        return str(info.status)

    async def read_log(self, job_id: str, follower: LogFollower, on_lines: OnLines = lambda lines: None) -> LogReader:
        """Read the job's whole log (``GET /logs``) in bounded pieces, handing the lines not shown yet to
        ``on_lines``; never holds the whole log."""
        reader = LogReader(follower)
        settings = await self.get_settings()
        path = jobs_api.job_path(job_id, "logs")
        try:
            async with (await self.session()).get(settings.address + path) as response:
                if response.status != 200:
                    raise jobs_api.http_error(settings, "GET", path, Reply(response.status, await response.text()))
                async for data in response.content.iter_chunked(READ_CHUNK_BYTES):
                    on_lines(reader.feed(data))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise jobs_api.unreachable_error(settings, self.ray_conn_id, exc, 1) from exc
        return reader

    # -- watching a job: the async driver of ``watch.Watch`` -----------------------------------------------

    async def wait_for_job(
        self,
        job_id: str,
        *,
        follower: LogFollower,
        on_lines: OnLines,
        poll_interval: float = POLL_INTERVAL_S,
        deadline: float | None = None,
        window: float | None = None,
        on_status: Any = None,
    ) -> JobInfo:
        """Watch the job until it ended, or the Unix time ``deadline`` passed (then its record says it still
        runs), handing each batch of new log lines to ``on_lines``; ``on_status`` hears each new status. A
        cluster that does not answer is waited for over ``window`` seconds (default: ``[ray_train]
        contact_window``), then ``watch.ContactLost`` is raised."""
        window = await asyncio.to_thread(contact_window) if window is None else window
        watch = Watch(
            job_id, follower, poll_interval=poll_interval, deadline=deadline, contact_window=window, log=self.log
        )
        stream: Stream | None = None
        status = None
        try:
            while True:
                step = watch.next()
                if step.do is Do.OPEN_STREAM:
                    stream = await self._open(job_id, watch)
                elif step.do is Do.READ_STREAM:
                    if stream is None:  # never: the watch reads only a stream it was told opened
                        watch.stream_closed(None)
                    else:
                        stream = await self._read_stream(stream, watch, on_lines)
                elif step.do is Do.POLL:
                    await self._poll(job_id, watch)
                    if watch.info is not None and watch.info.status != status and on_status is not None:
                        on_status(status := watch.info.status)
                elif step.do is Do.FETCH_LOG:
                    await self._fetch_log(job_id, watch, on_lines)
                elif step.do is Do.SLEEP:
                    await asyncio.sleep(step.seconds)
                elif step.do is Do.GIVE_UP and watch.error is not None:
                    raise watch.error
                elif step.do is Do.RETURN and watch.info is not None:
                    on_lines(follower.flush() if watch.ended() else [])
                    return watch.info
        finally:
            if stream is not None:
                await self._close(stream)

    async def _poll(self, job_id: str, watch: Watch) -> None:
        try:
            info = await self.get_job_info(job_id)
        except RayTrainClusterError as exc:
            watch.poll_failed(exc)
        else:
            watch.polled(info)

    async def _fetch_log(self, job_id: str, watch: Watch, on_lines: OnLines) -> None:
        try:
            reader = await self.read_log(job_id, watch.follower, on_lines)
        except RayTrainClusterError as exc:
            watch.log_failed(exc)
        else:
            watch.log_read(reader)

    async def open_log_stream(self, job_id: str) -> Stream | None:
        """The websocket following the job's log, or None where it cannot be opened (then the watch falls back)."""
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
        except Exception as exc:  # noqa: BLE001 - the watch falls back: say so and go on
            self.log.info("No log stream for Ray job %s (%s)", job_id, exc)
            return None

    async def _open(self, job_id: str, watch: Watch) -> Stream | None:
        """The job's log stream, if a slot to this cluster is free (``max_log_streams``) and it opens."""
        cluster = (await self.get_settings()).address
        limit = max_log_streams()
        if not STREAM_SLOTS.take(cluster, limit):
            if watch.waiting_for_slot:
                return None
            self.log.info(
                "%d log streams to this Ray cluster are open here ([ray_train] max_log_streams): following job %s "
                "by its status; its log comes when a stream frees or at the end",
                STREAM_SLOTS.count(cluster),
                job_id,
            )
            watch.stream_refused(no_slot=True)
            return None
        try:
            stream = await self.open_log_stream(job_id)
        except BaseException:  # cancelled (the task was killed or cleared): the slot is not lost to the triggerer
            STREAM_SLOTS.give(cluster)
            raise
        if stream is None:
            STREAM_SLOTS.give(cluster)
            watch.stream_refused()
        else:
            watch.stream_opened()
        return stream

    async def _close(self, stream: Stream) -> None:
        cluster = (await self.get_settings()).address  # cached since ``_open``: it does not suspend
        try:
            await stream.close()
        finally:
            STREAM_SLOTS.give(cluster)

    async def _read_stream(self, stream: Stream, watch: Watch, on_lines: OnLines) -> Stream | None:
        """Hand the stream's messages to the watch while it says to read. Returns the stream, or None once it
        closed."""
        while (left := watch.read_left()) > 0:
            try:
                message = await stream.receive(timeout=left)
            except TimeoutError:
                break
            if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                # Ray closes the stream once the job ended; a proxy or the network may drop it before.
                code = stream.close_code
                await self._close(stream)
                watch.stream_closed(code)
                return None
            on_lines(watch.feed(message.data))
        return stream
