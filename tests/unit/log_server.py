"""A stub Ray Jobs API in a process of its own, for the watch tests that need a huge log or a websocket: the test
process's memory is then the hook's alone. ``python log_server.py MODE SIZE STATUS STREAM`` prints its port.

- ``MODE`` ``lines``: ``SIZE`` bytes of short lines; ``one-line``: ``SIZE`` bytes with no newline. Either way the
  log ends with a newline and the manifest's line for job ``j``.
- ``STATUS``: what ``GET /api/jobs/j`` says (``RUNNING`` forever, or ``SUCCEEDED``).
- ``STREAM``: ``none`` (no websocket: 404), ``close`` (every stream is accepted and closed at once, as a proxy that
  cuts them), ``log`` (the log sent in 20,000-character messages, then closed as Ray does after the end).

``GET /_seen`` answers the requests seen so far, as ``[[method, path], ...]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator

from aiohttp import web

MANIFEST = 'AIRFLOW_RAY_TRAIN_MANIFEST={"submission_id": "j"}'
PIECE = 2**16


def log_pieces(mode: str, size: int) -> Iterator[str]:
    if mode == "lines":
        line = "epoch 0000 loss 0.123456 accuracy 0.987654 — a line of a long training's log ...\n"
        block = line * (PIECE // len(line))
    else:
        block = "x" * PIECE
    sent = 0
    while sent < size:
        piece = block[: size - sent]
        sent += len(piece)
        yield piece
    yield "\n" + MANIFEST + "\n"


def main() -> None:
    mode, size, status, stream = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    seen: list[list[str]] = []

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.path != "/_seen":
            seen.append([request.method, request.path])
        return await handler(request)

    async def job(request: web.Request) -> web.Response:
        return web.json_response({"submission_id": "j", "status": status, "message": ""})

    async def logs(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"logs": "')
        for piece in log_pieces(mode, size):
            await response.write(json.dumps(piece)[1:-1].encode())
        await response.write(b'"}')
        await response.write_eof()
        return response

    async def tail(request: web.Request) -> web.StreamResponse:
        if stream == "none":
            raise web.HTTPNotFound()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if stream == "log":
            for piece in log_pieces(mode, size):
                for start in range(0, len(piece), 20_000):
                    await ws.send_str(piece[start : start + 20_000])
        await ws.close()
        return ws

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "4", "ray_version": "2.60.0"})

    async def seen_so_far(request: web.Request) -> web.Response:
        return web.json_response(seen)

    async def stop(request: web.Request) -> web.Response:
        return web.json_response({"stopped": True})

    app = web.Application(middlewares=[record])
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/jobs/j", job)
    app.router.add_get("/api/jobs/j/logs", logs)
    app.router.add_get("/api/jobs/j/logs/tail", tail)
    app.router.add_post("/api/jobs/j/stop", stop)
    app.router.add_get("/_seen", seen_so_far)

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
