"""The embedded local head, started for real: it keeps to loopback, keeps Airflow's environment (secrets) from its
jobs, and replaces a head that stopped answering instead of leaving it behind."""

from __future__ import annotations

import json
import shlex
import sys
import uuid

import psutil
import pytest
from ray_train_helpers import wait_for

from airflow_ray_train.hooks.ray_train import RayTrainHook
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


def test_the_embedded_head_keeps_to_loopback_and_airflows_secrets_from_its_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "not-for-jobs")
    monkeypatch.setenv("AIRFLOW_CONN_SECRET_DB", "postgresql://user:pw@db/x")
    cluster = LocalRayCluster(str(tmp_path / "embedded"))
    head = cluster.ensure(num_cpus=2)
    try:
        assert _listening(head.pid) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, _listening(head.pid)
        monkeypatch.setenv("AIRFLOW_RAY_TRAIN_LOCAL_DIR", str(tmp_path / "embedded"))
        monkeypatch.delenv("AIRFLOW_CONN_RAY_TRAIN_DEFAULT", raising=False)
        hook = RayTrainHook()
        code = "import os; print('AIRFLOW_KEYS', sorted(k for k in os.environ if k.startswith('AIRFLOW')))"
        job_id = hook.submit_job(
            entrypoint=f"{sys.executable} -c {shlex.quote(code)}", submission_id=f"env-{uuid.uuid4().hex[:6]}"
        )
        assert hook.wait_for_job(job_id, poll_interval=0.5, timeout=120)["status"] == "SUCCEEDED"
        assert "AIRFLOW_KEYS []" in hook.get_job_logs(job_id)
        hook.close()

        # The head stops answering (here: its recorded token no longer works): the next task replaces it,
        # and stops the old one instead of leaving it running.
        state = json.loads(cluster.state_file.read_text())
        cluster.state_file.write_text(json.dumps({**state, "token": "wrong"}))
        replacement = cluster.ensure(num_cpus=2)
        assert replacement.pid != head.pid and replacement.healthy()
        wait_for(lambda: not psutil.pid_exists(head.pid) or psutil.Process(head.pid).status() == "zombie", 60)
    finally:
        cluster.stop()
        RayHead(**{**json.loads(json.dumps(head.__dict__))}).stop()
