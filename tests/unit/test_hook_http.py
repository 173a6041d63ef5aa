"""RayTrainHook against a stub HTTP server on loopback (the hook's boundary): auth header, retries with
backoff, an unreachable cluster, a rejected token. Real-cluster behaviour is in tests/integration."""

from __future__ import annotations

import json

import pytest
from stub_ray import STUB_TOKEN

from airflow_ray_train.compat import AirflowFailException
from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainClusterError
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.local_cluster import free_port

TOKEN = STUB_TOKEN


def test_token_goes_in_the_authorization_header_and_never_in_repr(stub_ray):
    hook = RayTrainHook("ray_stub")
    assert hook.get_version()["ray_version"] == "2.60.0"
    headers = stub_ray.seen[-1].headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-Team"] == "ml"
    assert TOKEN not in repr(hook.settings)
    assert hook.settings.verify is True  # TLS verification is on unless the connection turns it off


def test_a_busy_cluster_is_retried_with_backoff(stub_ray):
    stub_ray.script((503, {"error": "busy"}), (503, {"error": "busy"}), (200, {"ray_version": "2.60.0"}))
    hook = RayTrainHook("ray_stub", max_retries=3, retry_backoff=0.01)
    assert hook.get_version()["ray_version"] == "2.60.0"
    assert len(stub_ray.seen) == 3


def test_a_rejected_token_fails_at_once_with_the_fix_and_without_the_token(stub_ray):
    stub_ray.script((401, {"error": "Unauthorized: invalid token"}), (401, {"error": "Unauthorized: invalid token"}))
    hook = RayTrainHook("ray_stub", max_retries=3, retry_backoff=0.01)
    with pytest.raises(RayTrainAuthError) as raised:
        hook.get_version()
    assert isinstance(raised.value, AirflowFailException)  # retrying cannot fix a wrong token
    assert "HTTP 401" in str(raised.value) and "ray get-auth-token" in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert len(stub_ray.seen) == 2  # the connection was read once more, in case the token was rotated


def test_a_token_rotated_in_the_connection_is_picked_up_on_the_next_rejection(stub_ray, monkeypatch):
    hook = RayTrainHook("ray_stub", max_retries=0)
    assert hook.get_version()["ray_version"] == "2.60.0"
    rotated = {"conn_type": "ray_train", "host": stub_ray.address, "password": "rotated-token"}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_STUB", json.dumps(rotated))
    stub_ray.script((403, {"error": "Forbidden"}))
    assert hook.get_version()["ray_version"] == "2.60.0"
    assert [seen.headers["Authorization"] for seen in stub_ray.seen[-2:]] == [
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
