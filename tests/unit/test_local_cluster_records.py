"""The embedded local head's bookkeeping: it keeps its token private, never stops a process that only reuses its
recorded pid, writes its state file private from the first byte, and gets ports that do not collide. The head
itself, started for real, is tests/integration/test_local_cluster.py."""

from __future__ import annotations

import os
import signal
import subprocess

from airflow_ray_train.local_cluster import PASS_ENV_ENV, LocalRayCluster, RayHead, free_ports, head_environment


def test_the_token_never_shows_in_a_repr():
    head = RayHead(dashboard_url="http://127.0.0.1:8265", gcs_address="127.0.0.1:6379", token="s3cret", pid=1)
    assert "s3cret" not in repr(head)


def test_stop_leaves_a_process_that_reused_the_recorded_pid_alone():
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        RayHead(dashboard_url="x", gcs_address="x", token="t", pid=stranger.pid, temp_dir="/tmp/art_ray_gone").stop()
        assert stranger.poll() is None  # the recorded head is gone; its pid now belongs to someone else
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()


def test_the_state_file_is_private_from_its_first_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)  # no fixing the mode up afterwards
    cluster = LocalRayCluster(str(tmp_path))
    cluster.state_dir.mkdir(parents=True, exist_ok=True)
    cluster._record(RayHead(dashboard_url="x", gcs_address="x", token="t", pid=1))
    assert cluster.state_file.stat().st_mode & 0o077 == 0


def test_the_ports_a_head_gets_are_all_different():
    for _ in range(20):
        ports = free_ports(8, besides=8265)
        assert len(set(ports)) == 8 and 8265 not in ports


def test_the_head_gets_only_the_environment_jobs_need_and_what_the_user_adds():
    airflow_process = {
        "PATH": "/venv/bin:/usr/bin",
        "HOME": "/home/airflow",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/dags",
        "RAY_DEDUP_LOGS": "0",
        "CUDA_VISIBLE_DEVICES": "0",
        "HTTPS_PROXY": "http://proxy:3128",
        "TMPDIR": "/scratch",
        "AIRFLOW__CORE__FERNET_KEY": "fernet",
        "AIRFLOW_CONN_PROD_DB": "postgresql://u:p@db/prod",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "GOOGLE_APPLICATION_CREDENTIALS": "/keys/gcp-sa.json",
        "HF_TOKEN": "hf",
        "WANDB_API_KEY": "wandb",
        "MLFLOW_TRACKING_PASSWORD": "mlflow",
        "DATABASE_URL": "postgresql://u:p@db/prod",
        "RAY_ADDRESS": "http://another-cluster:8265",
        "RAY_AUTH_TOKEN": "another-clusters-token",
        "AWS_REGION": "eu-west-1",
    }
    env = head_environment(airflow_process)
    assert set(env) == {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "PYTHONPATH",
        "RAY_DEDUP_LOGS",
        "CUDA_VISIBLE_DEVICES",
        "HTTPS_PROXY",
        "TMPDIR",
    }
    added = head_environment({**airflow_process, PASS_ENV_ENV: "AWS_REGION, HF_*"})
    assert added["AWS_REGION"] == "eu-west-1" and added["HF_TOKEN"] == "hf" and "AWS_SECRET_ACCESS_KEY" not in added
