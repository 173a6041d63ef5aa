"""RayTrainHook against a stub HTTP server on loopback (the hook's boundary): auth header, retries with
backoff, an unreachable cluster, a rejected token. Real-cluster behaviour is in tests/integration."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainClusterError
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.local_cluster import free_port

TOKEN = "s3cr3t-token-value"


class StubRay(BaseHTTPRequestHandler):
    """Answers from a script: each request pops the next (status, body); records what it received."""

    script: list[tuple[int, dict]] = []
    seen: list[dict] = []

    def _answer(self) -> None:
        StubRay.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
        status, body = StubRay.script.pop(0) if StubRay.script else (200, {"version": "4", "ray_version": "2.60.0"})
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub_ray(monkeypatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubRay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StubRay.script, StubRay.seen = [], []
    address = f"http://127.0.0.1:{server.server_address[1]}"
    conn = {"conn_type": "ray_train", "host": address, "password": TOKEN, "extra": {"headers": {"X-Team": "ml"}}}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_STUB", json.dumps(conn))
    yield address
    server.shutdown()


def test_token_goes_in_the_authorization_header_and_never_in_repr(stub_ray):
    hook = RayTrainHook("ray_stub")
    assert hook.get_version()["ray_version"] == "2.60.0"
    headers = StubRay.seen[-1]["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-Team"] == "ml"
    assert TOKEN not in repr(hook.settings)
    assert hook.settings.verify is True  # TLS verification is on unless the connection turns it off


def test_a_busy_cluster_is_retried_with_backoff(stub_ray):
    StubRay.script = [(503, {"error": "busy"}), (503, {"error": "busy"}), (200, {"ray_version": "2.60.0"})]
    hook = RayTrainHook("ray_stub", max_retries=3, retry_backoff=0.01)
    assert hook.get_version()["ray_version"] == "2.60.0"
    assert len(StubRay.seen) == 3


def test_a_rejected_token_fails_at_once_with_the_fix_and_without_the_token(stub_ray):
    StubRay.script = [(401, {"error": "Unauthorized: invalid token"})] * 2
    hook = RayTrainHook("ray_stub", max_retries=3, retry_backoff=0.01)
    with pytest.raises(RayTrainAuthError) as raised:
        hook.get_version()
    assert isinstance(raised.value, AirflowFailException)  # retrying cannot fix a wrong token
    assert "HTTP 401" in str(raised.value) and "ray get-auth-token" in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert len(StubRay.seen) == 2  # the connection was read once more, in case the token was rotated


def test_a_token_rotated_in_the_connection_is_picked_up_on_the_next_rejection(stub_ray, monkeypatch):
    hook = RayTrainHook("ray_stub", max_retries=0)
    assert hook.get_version()["ray_version"] == "2.60.0"
    rotated = {"conn_type": "ray_train", "host": stub_ray, "password": "rotated-token"}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_STUB", json.dumps(rotated))
    StubRay.script = [(403, {"error": "Forbidden"})]
    assert hook.get_version()["ray_version"] == "2.60.0"
    assert [seen["headers"]["Authorization"] for seen in StubRay.seen[-2:]] == [
        f"Bearer {TOKEN}",
        "Bearer rotated-token",
    ]


def test_an_unreachable_cluster_gives_up_after_bounded_retries_naming_the_address(monkeypatch):
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_RAY_DOWN", json.dumps({"conn_type": "ray_train", "host": address}))
    hook = RayTrainHook("ray_down", max_retries=2, retry_backoff=0.01)
    with pytest.raises(RayTrainClusterError) as raised:
        hook.get_version()
    assert f"cannot reach the Ray cluster at {address}" in str(raised.value)
    assert "after 3 attempts" in str(raised.value)


def test_a_missing_named_connection_is_a_config_error(monkeypatch):
    from airflow_ray_train.exceptions import RayTrainConfigError

    with pytest.raises(RayTrainConfigError, match="connection 'no_such_conn' does not exist"):
        _ = RayTrainHook("no_such_conn").settings
