"""The embedded local head, started for real: it keeps to loopback, gives its jobs only the environment they need
(none of Airflow's secrets, not its token), and is replaced only when it is really gone: a dead head at once, a
hung one after the answer window, a slow one never (its jobs run on)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
import time
import uuid

import httpx
import psutil
import pytest
from ray_train_helpers import wait_for

from airflow_ray_train import local_cluster
from airflow_ray_train.local_cluster import LocalRayCluster, RayHead

pytestmark = [pytest.mark.integration]


def _listening(pid: int) -> set[str]:
    addresses = set()
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        addresses |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
    return addresses


def _jobs_api(head: RayHead) -> httpx.Client:
    return httpx.Client(base_url=head.dashboard_url, headers={"Authorization": f"Bearer {head.token}"}, timeout=30)


def _submit(head: RayHead, code: str) -> str:
    job_id = f"local-{uuid.uuid4().hex[:8]}"
    with _jobs_api(head) as api:
        reply = api.post(
            "/api/jobs/", json={"entrypoint": f"{sys.executable} -c {shlex.quote(code)}", "submission_id": job_id}
        )
    assert reply.status_code == 200, reply.text
    return job_id


def _status(head: RayHead, job_id: str) -> str:
    with _jobs_api(head) as api:
        return str(api.get(f"/api/jobs/{job_id}").json()["status"])


def _logs(head: RayHead, job_id: str) -> str:
    with _jobs_api(head) as api:
        return str(api.get(f"/api/jobs/{job_id}/logs").json()["logs"])


def _ended(head: RayHead, job_id: str, timeout: float = 120) -> str:
    return wait_for(
        lambda: _status(head, job_id) if _status(head, job_id) in ("SUCCEEDED", "FAILED", "STOPPED") else None, timeout
    )


def _dashboard(head: RayHead) -> psutil.Process:
    """The head's dashboard process (it serves the Jobs API), one of the processes this test's head started."""
    for process in psutil.Process(head.pid).children(recursive=True):
        try:
            if any(part.endswith("dashboard/dashboard.py") for part in process.cmdline()):
                return process
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no dashboard process under the head (pid {head.pid})")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def cluster(tmp_path):
    cluster = LocalRayCluster(str(tmp_path / "embedded"))
    started: list[RayHead] = []
    real_ensure = cluster.ensure

    def ensure(num_cpus: int | None = 2) -> RayHead:
        head = real_ensure(num_cpus=num_cpus)
        started.append(head)
        return head

    cluster.ensure = ensure  # type: ignore[method-assign]
    yield cluster
    cluster.stop()
    for head in started:  # every head this test started, by its own pid
        head.stop()


def test_the_embedded_head_keeps_to_loopback_and_airflows_secrets_and_its_token_from_its_jobs(cluster, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "not-for-jobs")
    monkeypatch.setenv("AIRFLOW_CONN_SECRET_DB", "postgresql://user:pw@db/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-for-airflow")
    monkeypatch.setenv("HF_TOKEN", "hf-secret-for-airflow")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:pw@db/prod")
    monkeypatch.setenv("MY_DATA_DIR", "/data/asked-for")
    monkeypatch.setenv(local_cluster.PASS_ENV_ENV, "MY_DATA_*")
    head = cluster.ensure()
    assert _listening(head.pid) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, _listening(head.pid)
    code = (
        "import json, os, ray; ray.init(); "
        "print('RESOURCES', ray.cluster_resources().get('CPU')); "
        "print('ENV=' + json.dumps(dict(os.environ)))"
    )
    job_id = _submit(head, code)
    assert _ended(head, job_id) == "SUCCEEDED", _logs(head, job_id)
    logs = _logs(head, job_id)
    env = json.loads(next(line for line in logs.splitlines() if line.startswith("ENV="))[4:])
    assert "RESOURCES 2.0" in logs  # the driver still reaches the cluster, with the token from its file
    assert not [key for key in env if key.startswith("AIRFLOW")]
    leaked = {"aws-secret-for-airflow", "hf-secret-for-airflow", "postgresql://user:pw@db/prod", head.token}
    assert not leaked & set(env.values()), sorted(key for key, value in env.items() if value in leaked)
    assert "RAY_AUTH_TOKEN" not in env and env["MY_DATA_DIR"] == "/data/asked-for"
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_a_head_whose_jobs_api_is_slow_for_seconds_is_kept_and_its_job_runs_on(cluster):
    head = cluster.ensure()
    job_id = _submit(head, "import time\nfor i in range(25):\n    print('tick', i, flush=True); time.sleep(1)")
    wait_for(lambda: "tick 1" in _logs(head, job_id), 60, what="the job to run")
    dashboard = _dashboard(head)
    # The dashboard stops answering for 8 s (more than two health checks' timeouts), as when many jobs end at once.
    dashboard.send_signal(signal.SIGSTOP)
    resume = threading.Timer(8.0, dashboard.send_signal, args=(signal.SIGCONT,))
    resume.start()
    try:
        started = time.monotonic()
        again = cluster.ensure()
        waited = time.monotonic() - started
    finally:
        resume.join()
    assert again.pid == head.pid and again.temp_dir == head.temp_dir and os.path.isdir(head.temp_dir)
    assert waited >= 5, waited  # it waited for the head instead of replacing it
    assert _ended(head, job_id) == "SUCCEEDED" and "tick 24" in _logs(head, job_id)


def test_a_dead_head_is_replaced_at_once(cluster):
    head = cluster.ensure()
    os.killpg(head.pid, signal.SIGKILL)  # the head this test started, by its process group
    wait_for(lambda: _gone(head.pid), 30, what="the head to die")
    started = time.monotonic()
    replacement = cluster.ensure()
    assert replacement.pid != head.pid and replacement.healthy()
    assert time.monotonic() - started < local_cluster.HEAD_ANSWER_WINDOW_S  # no answer window for a dead head


def test_a_head_silent_for_the_whole_window_is_stopped_and_replaced(cluster, monkeypatch):
    head = cluster.ensure()
    monkeypatch.setattr(local_cluster, "HEAD_ANSWER_WINDOW_S", 8.0)
    _dashboard(head).send_signal(signal.SIGSTOP)  # hung for good
    replacement = cluster.ensure()
    assert replacement.pid != head.pid and replacement.healthy()
    wait_for(lambda: _gone(head.pid), 60, what="the hung head to be stopped")


def test_a_head_that_rejects_its_recorded_token_is_replaced_not_left_behind(cluster):
    head = cluster.ensure()
    state = json.loads(cluster.state_file.read_text())
    cluster.state_file.write_text(json.dumps({**state, "token": "wrong"}))
    started = time.monotonic()
    replacement = cluster.ensure()
    assert replacement.pid != head.pid and replacement.healthy()
    assert time.monotonic() - started < local_cluster.HEAD_ANSWER_WINDOW_S
    wait_for(lambda: _gone(head.pid), 60, what="the old head to be stopped")
