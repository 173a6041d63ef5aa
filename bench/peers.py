"""Peers: the same Train job as modes (b)/(c) of the overhead section, submitted through another Airflow
provider's Ray job operator instead of ``RayTrainOperator``.

Each peer lives in its own virtual environment (Airflow 3.3.2 + Ray 2.60.0 + the peer; both peers need Ray
installed next to Airflow), never in the project's ``.venv``. ``run_peer`` writes a one-task DAG for the peer's
operator, runs it with ``dag.test()`` in that venv's Python (a subprocess with its own ``AIRFLOW_HOME`` and SQLite
DB), and submits the same entrypoint ``python -m airflow_ray_train_runtime <spec_arg>`` with the same
``runtime_env={"py_modules": [...]}`` (the URIs the shipping section already uploaded) to the private head.
The driver itself runs on the head, with the head's Python, exactly as in (b) and (c).

Peers (checked with Airflow 3.3.2, Ray 2.60.0, Python 3.11):

- ``astro`` -- ``astro-provider-ray`` 0.4.0, ``ray_provider.operators.SubmitRayJob`` (deferrable only: it checks
  once, then defers to ``RayJobTrigger``; ``dag.test()`` runs the trigger in line). Connection ``ray_default``
  (a ``KubernetesHook`` subclass) with ``extra.address`` = the dashboard URL; no submission id parameter.
- ``google`` -- ``apache-airflow-providers-google`` 22.8.0, ``airflow.providers.google.cloud.operators.ray.
  RaySubmitJobOperator`` (sync; polls ``get_job_status`` every 5 s, hard-coded). A plain ``http://`` dashboard
  address goes straight to ``ray.job_submission.JobSubmissionClient``; no GCP credentials are used.

Ray token auth: both peers use Ray's ``JobSubmissionClient``, which adds the bearer token from
``RAY_AUTH_MODE=token`` / ``RAY_AUTH_TOKEN`` in the environment, so the subprocess gets the head's token there.

Venvs: ``BENCH_PEER_VENV_ASTRO`` / ``BENCH_PEER_VENV_GOOGLE`` (default ``/tmp/peers_astro``,
``/tmp/peers_google``); ``python bench/peers.py setup astro|google`` creates one with ``PEER_REQUIREMENTS``.
``python bench/peers.py check astro|google`` starts a private head (``num_cpus=4``), ships the example package
and runs the job once through the peer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The interpreter the project's .venv was made from (same CPython for the peers).
PYTHON = os.environ.get("BENCH_PEER_PYTHON") or getattr(sys, "_base_executable", sys.executable)
PEER_REQUIREMENTS = {
    "astro": ["apache-airflow==3.3.2", "ray[default]==2.60.0", "astro-provider-ray==0.4.0"],
    "google": ["apache-airflow==3.3.2", "ray[default]==2.60.0", "apache-airflow-providers-google==22.8.0"],
}
POLL_INTERVAL = 1  # RayTrainOperator's default poll interval; the Google operator's is fixed at 5 s.

_TASKS = {
    "astro": """
from ray_provider.operators import SubmitRayJob

SubmitRayJob(
    task_id="train",
    conn_id="ray_default",
    entrypoint=ENTRYPOINT,
    runtime_env=RUNTIME_ENV,
    poll_interval=POLL_INTERVAL,
    fetch_logs=True,
    wait_for_completion=True,
    job_timeout_seconds=1800,
)
""",
    "google": """
from airflow.providers.google.cloud.operators.ray import RaySubmitJobOperator

RaySubmitJobOperator(
    task_id="train",
    cluster_address=CLUSTER_ADDRESS,
    entrypoint=ENTRYPOINT,
    runtime_env=RUNTIME_ENV,
    submission_id=SUBMISSION_ID,
    wait_for_job_done=True,
    get_job_logs=True,
)
""",
}

_SCRIPT = """
import json, os, sys, time

ENTRYPOINT = os.environ["PEER_ENTRYPOINT"]
RUNTIME_ENV = json.loads(os.environ["PEER_RUNTIME_ENV"])
CLUSTER_ADDRESS = os.environ["PEER_CLUSTER_ADDRESS"]
SUBMISSION_ID = os.environ["PEER_SUBMISSION_ID"]
POLL_INTERVAL = int(os.environ["PEER_POLL_INTERVAL"])

from airflow.sdk import DAG

with DAG(dag_id="peer_{name}", schedule=None, catchup=False) as dag:
{task}

if __name__ == "__main__":
    from airflow.utils import db

    if not os.path.exists(os.environ["PEER_DB_FILE"]):
        db.resetdb()
    started = time.perf_counter()
    dag_run = dag.test()
    returned = time.time()
    wall = time.perf_counter() - started
    print("PEER_RESULT " + json.dumps(dict(wall_s=wall, returned=returned, state=str(dag_run.state))), flush=True)
"""

_HOMES: dict[str, Path] = {}


def venv_of(name: str) -> Path:
    return Path(os.environ.get(f"BENCH_PEER_VENV_{name.upper()}", f"/tmp/peers_{name}"))


def setup_peer(name: str) -> Path:
    """Create the peer's venv (same CPython as the project's .venv) and install ``PEER_REQUIREMENTS[name]``."""
    venv = venv_of(name)
    if not (venv / "bin" / "python").exists():
        subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PEER_REQUIREMENTS[name]], check=True)
    return venv


def _home(name: str) -> Path:
    if name not in _HOMES:
        _HOMES[name] = Path(tempfile.mkdtemp(prefix=f"art_peer_{name}_"))
    return _HOMES[name]


def _job_by_entrypoint(head: Any, entrypoint: str) -> dict[str, Any]:
    import httpx

    response = httpx.get(
        f"{head.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {head.token}"}, timeout=30
    )
    response.raise_for_status()
    jobs = [job for job in response.json() if job.get("entrypoint") == entrypoint]
    if len(jobs) != 1:
        raise RuntimeError(f"expected one job with the peer's entrypoint, found {len(jobs)}")
    return jobs[0]


def run_peer(name: str, head: Any, py_modules: list[str], spec_arg: str) -> dict[str, Any]:
    """Run ``python -m airflow_ray_train_runtime <spec_arg>`` through peer ``name``'s operator (``dag.test()``).

    ``wall_s`` is ``dag.test()`` in the peer's process (like (c)); ``process_s`` is the whole subprocess
    (interpreter, Airflow and provider imports, and on a peer's first call also creating its SQLite DB).
    ``job_s`` and ``latency_s`` (``dag.test()`` returned minus the job's ``end_time``) come from the head.
    """
    from airflow_ray_train_runtime.spec import TrainSpec

    python = venv_of(name) / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"peer venv missing: {python} (run `python bench/peers.py setup {name}`)")
    home = _home(name)
    script = home / f"peer_{name}_dag.py"
    task = "\n".join(f"    {line}" if line else "" for line in _TASKS[name].strip("\n").splitlines())
    script.write_text(_SCRIPT.format(name=name, task=task))
    entrypoint = f"python -m airflow_ray_train_runtime {spec_arg}"
    db_file = home / "airflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RAY_", "BENCH_", "PYTHON"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db_file}",
            # astro: RayHook reads the dashboard address from its connection's extra.
            "AIRFLOW_CONN_RAY_DEFAULT": json.dumps({"conn_type": "ray", "extra": {"address": head.dashboard_url}}),
            # google: GoogleBaseHook.__init__ looks the GCP connection up (AirflowNotFoundException without one);
            # an empty one will do, since the Ray hook never asks it for credentials.
            "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps({"conn_type": "google_cloud_platform"}),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": head.token,
            "PEER_ENTRYPOINT": entrypoint,
            "PEER_RUNTIME_ENV": json.dumps({"py_modules": py_modules}),
            "PEER_CLUSTER_ADDRESS": head.dashboard_url,
            "PEER_SUBMISSION_ID": TrainSpec.from_arg(spec_arg).submission_id,
            "PEER_POLL_INTERVAL": str(POLL_INTERVAL),
            "PEER_DB_FILE": str(db_file),
        }
    )
    started = time.perf_counter()
    proc = subprocess.run([str(python), str(script)], env=env, capture_output=True, text=True, cwd=home)
    process_s = time.perf_counter() - started
    log_dir = os.environ.get("BENCH_PEER_LOG_DIR")  # keep each peer run's full output there, if set
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        (Path(log_dir) / f"{name}-{int(time.time())}.log").write_text(f"{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PEER_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"peer {name} exited {proc.returncode}:\n{tail}")
    result = json.loads(lines[-1][len("PEER_RESULT ") :])
    if "success" not in result["state"].lower():
        raise RuntimeError(f"peer {name}: dag run ended {result['state']}:\n{tail}")
    job = _job_by_entrypoint(head, entrypoint)
    # The Google operator returns normally whatever the job's final status: check it here.
    if job["status"] != "SUCCEEDED":
        raise RuntimeError(f"peer {name}: dag run {result['state']}, job {job['status']}:\n{tail}")
    return {
        "wall_s": result["wall_s"],
        "process_s": process_s,
        "job_s": (job["end_time"] - job["start_time"]) / 1000,
        "latency_s": result["returned"] - job["end_time"] / 1000,
        "job_id": job.get("submission_id") or job.get("job_id"),
    }


def _check(names: list[str]) -> int:
    """One run per peer against a private head from ``start_ray_head(num_cpus=4)`` (as ``bench/run.py`` does)."""
    import secrets

    import harness
    import shipping

    from airflow_ray_train.local_cluster import start_ray_head

    workspace = harness.prepare()
    temp_dir = tempfile.mkdtemp(prefix="art_peer_ray_")
    head = start_ray_head(temp_dir=temp_dir, token=secrets.token_hex(16), num_cpus=4)
    try:
        harness.use_head(head)
        bench = harness.Bench(harness.Settings.from_environ(), workspace, head)
        py_modules = shipping.run(bench)["rows"][0]["py_modules"]
        print(f"py_modules: {py_modules}", flush=True)
        for name in names:
            spec = harness.make_spec(name, workspace.storage)
            row = run_peer(name, head, py_modules, spec.to_arg())
            print(f"peer {name}: {json.dumps(row)}", flush=True)
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for home in _HOMES.values():
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(workspace.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "setup":
        for peer in sys.argv[2:]:
            print(setup_peer(peer))
        sys.exit(0)
    if len(sys.argv) >= 2 and sys.argv[1] == "check":
        sys.exit(_check(sys.argv[2:] or list(_TASKS)))
    print(__doc__)
    sys.exit(2)
