"""One stub of the Ray Jobs API on loopback for the unit tests: the hooks' HTTP boundary, nothing deeper."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest


STUB_TOKEN = "s3cr3t-token-value"
Answer = tuple[int, Any]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class StubRay:
    """``respond(method, path)`` answers each request (``script`` queues answers instead); ``seen`` records
    them. The connection ``ray_stub`` points at it, with ``STUB_TOKEN`` and an ``X-Team`` header."""

    address: str = ""
    seen: list[Request] = field(default_factory=list)
    respond: Callable[[str, str], Answer] = lambda method, path: (200, {"version": "4", "ray_version": "2.60.0"})

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with ``answers`` in turn, then as ``respond`` did before."""
        queue, after = list(answers), self.respond
        self.respond = lambda method, path: queue.pop(0) if queue else after(method, path)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.seen if method is None or r.method == method]


def _handler(stub: StubRay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            stub.seen.append(Request(self.command, self.path, dict(self.headers)))
            status, body = stub.respond(self.command, self.path)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def serve(monkeypatch: pytest.MonkeyPatch) -> tuple[StubRay, ThreadingHTTPServer]:
    """Start a stub on a free loopback port and point the connection ``ray_stub`` at it."""
    stub = StubRay()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stub.address = f"http://127.0.0.1:{server.server_address[1]}"
    conn = {
        "conn_type": "ray_train",
        "host": stub.address,
        "password": STUB_TOKEN,
        "extra": {"headers": {"X-Team": "ml"}},
    }
    monkeypatch.setenv("AIRFLOW_CONN_RAY_STUB", json.dumps(conn))
    return stub, server
