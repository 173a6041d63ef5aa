"""``make bench``: measure what the provider adds on top of Ray, and write ``bench/REPORT.md`` and PNG plots.

Sections (issue 6): (2) shipping, (1) overhead (a) driver directly on the cluster, (b) ``ray job submit
--wait``, (c) ``RayTrainOperator`` sync through ``dag.test()``, alternating; (3) completion latency of (b)
and (c) from Ray's job ``end_time``. Everything runs against a private Ray head (own temp dir, ports and
token) that is stopped by its process group at the end; Airflow gets a private home and SQLite DB.

Environment: ``BENCH_RUNS`` (rounds, default 5), ``BENCH_WARMUP`` (unrecorded rounds first, default 1),
``BENCH_OUT`` (where REPORT.md and the plots go, default ``bench/``).
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = Path(os.environ.get("BENCH_OUT", str(BENCH)))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
#: A checkout of the provider at another commit: the scale section's standalone imports it first ("before").
PROVIDER_SRC = os.environ.get("BENCH_PROVIDER_SRC", "")
SCALE_NS = [int(n) for n in os.environ.get("BENCH_SCALE", "1,10,50").split(",")]
SCALE_WINDOW_S = float(os.environ.get("BENCH_SCALE_WINDOW", "60"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "1"))
ROOT = Path(tempfile.mkdtemp(prefix="art_bench_"))
AIRFLOW_HOME = ROOT / "airflow"
DAGS = ROOT / "dags"
STORAGE = ROOT / "ray_results"
for folder in (AIRFLOW_HOME, DAGS, STORAGE):
    folder.mkdir(parents=True)
(DAGS / "bench_dags.py").symlink_to(BENCH / "bench_dags.py")
(DAGS / "ray_train_examples").symlink_to(REPO / "example_dags" / "ray_train_examples")
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__RAY_TRAIN__DEFAULT_STORAGE_PATH": str(STORAGE),
        "AIRFLOW_RAY_TRAIN_LOCAL_DIR": str(ROOT / "embedded"),
    }
)
for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "AIRFLOW_CONN_RAY_TRAIN_DEFAULT"):
    os.environ.pop(key, None)
sys.path.insert(0, str(DAGS))

TRAIN_FUNC = "ray_train_examples.pytorch_classifier:train_func"
TRAIN_LOOP_CONFIG = {"train_size": 256, "epochs": 1, "batch_size": 64, "hidden": 16}
SCALING_CONFIG = {"num_workers": 2, "use_gpu": False}


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def machine() -> dict[str, Any]:
    import airflow
    import httpx
    import ray
    import torch

    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "nproc": sh("nproc"),
        "free_h": sh("free -h"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo").split(":")[-1].strip(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "airflow": airflow.__version__,
        "torch": torch.__version__,
        "httpx": httpx.__version__,
        "git": sh(f"git -C {REPO} rev-parse --short HEAD")
        + (" (dirty)" if sh(f"git -C {REPO} status --short") else ""),
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def make_spec(tag: str) -> Any:
    from airflow_ray_train.runtime.spec import TrainSpec

    name = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
    return TrainSpec(
        train_func=TRAIN_FUNC,
        run_name=name,
        submission_id=name,
        train_loop_config=dict(TRAIN_LOOP_CONFIG),
        scaling_config=dict(SCALING_CONFIG),
        run_config={"storage_path": str(STORAGE)},
    )


# -- (2) shipping ---------------------------------------------------------------------------------------------


def bench_shipping() -> dict[str, Any]:
    """First and repeat ``build_runtime_env`` (package existence checks + uploads) on a fresh head."""
    from airflow_ray_train.hooks.ray_train import RayTrainHook
    from airflow_ray_train.packaging import code_package

    rows = []
    for attempt in ("first", "repeat", "repeat"):
        hook = RayTrainHook()
        hook.get_version()  # connect first: time only the shipping
        started = time.perf_counter()
        env = hook.build_runtime_env(None, packages=[code_package(TRAIN_FUNC.split(":")[0])])
        rows.append(
            {
                "attempt": attempt,
                "bytes_uploaded": hook.bytes_uploaded,
                "seconds": time.perf_counter() - started,
                "py_modules": env["py_modules"],
            }
        )
        hook.close()
    return {"rows": rows}


# -- (1) overhead and (3) latency -------------------------------------------------------------------------------


def run_direct(head: Any, py_modules: list[str]) -> dict[str, Any]:
    """(a): the runtime driver as a plain Ray driver on the cluster (no Jobs API, no Airflow)."""
    spec = make_spec("a")
    env = dict(os.environ)
    env.update(
        {
            "RAY_ADDRESS": head.gcs_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": head.token,
            "PYTHONPATH": os.pathsep.join([str(REPO / "example_dags"), str(REPO)]),
            # What the Jobs API's supervisor hands its driver: the job's runtime_env (same py_modules as b/c),
            # so the Train workers import the same shipped code.
            "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"py_modules": py_modules}}),
        }
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_ray_train.runtime", spec.to_arg()], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"(a) driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"wall_s": wall}


def job_info(head: Any, job_id: str) -> dict[str, Any]:
    import httpx

    response = httpx.get(
        f"{head.dashboard_url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {head.token}"}, timeout=30
    )
    response.raise_for_status()
    return response.json()


def run_cli(head: Any, py_modules: list[str]) -> dict[str, Any]:
    """(b): ``ray job submit --wait`` with the same entrypoint and the already-uploaded py_modules."""
    spec = make_spec("b")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head.token)
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        head.dashboard_url,
        "--submission-id",
        spec.submission_id,
        "--runtime-env-json",
        json.dumps({"py_modules": py_modules}),
        # Ray 2.60's CLI waits by default and has no --wait flag (only --no-wait).
        "--",
        "python",
        "-m",
        "airflow_ray_train.runtime",
        spec.to_arg(),
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    returned = time.time()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise RuntimeError(f"(b) `ray job submit` exited {proc.returncode}:\n{tail}")
    info = job_info(head, spec.submission_id)
    if proc.returncode != 0 or info["status"] != "SUCCEEDED":
        raise RuntimeError(f"(b) failed ({info['status']}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {
        "wall_s": wall,
        "job_s": (info["end_time"] - info["start_time"]) / 1000,
        "latency_s": returned - info["end_time"] / 1000,
    }


def run_operator(head: Any, py_modules: list[str]) -> dict[str, Any]:
    """(c): ``RayTrainOperator`` sync, through ``dag.test()`` (real task runner, in-process)."""
    from bench_dags import bench_sync

    record = ROOT / f"record-{uuid.uuid4().hex[:8]}.json"
    os.environ["BENCH_RECORD"] = str(record)
    started = time.perf_counter()
    dag_run = bench_sync.test()
    returned = time.time()
    wall = time.perf_counter() - started
    if str(dag_run.state) not in ("success", "DagRunState.SUCCESS"):
        raise RuntimeError(f"(c) dag run ended {dag_run.state}")
    rec = json.loads(record.read_text())
    info = job_info(head, rec["job_id"])
    end = info["end_time"] / 1000
    return {
        "wall_s": wall,
        "execute_s": rec["execute_returned"] - rec["execute_started"],
        "job_s": (info["end_time"] - info["start_time"]) / 1000,
        "latency_s": rec["execute_returned"] - end,
        "latency_dagtest_s": returned - end,
        "requests": rec["requests"],
        "bytes_uploaded": rec["bytes_uploaded"],
    }


def run_peer(name: str) -> Any:
    """A peer provider's Ray job operator, same job, through ``dag.test()`` in the peer's own venv."""

    def run(head: Any, py_modules: list[str]) -> dict[str, Any]:
        import peers

        return dict(peers.run_peer(name, head, py_modules, make_spec(name).to_arg()))

    return run


#: Peers to run beside (a)-(c) where their venv exists (``make bench`` creates them; BENCH_PEERS= skips them).
PEERS = [p for p in os.environ.get("BENCH_PEERS", "astro,google").split(",") if p]
MODES = {"a": run_direct, "b": run_cli, "c": run_operator}
LABELS = {
    "a": "(a) driver directly on the cluster",
    "b": "(b) ray job submit (waits)",
    "c": "(c) RayTrainOperator sync (dag.test)",
    "astro": "astro-provider-ray 0.4.0 SubmitRayJob (dag.test)",
    "google": "Google provider 22.8.0 RaySubmitJobOperator (dag.test)",
}


def bench_overhead(head: Any, py_modules: list[str]) -> dict[str, Any]:
    import peers

    modes = dict(MODES)
    for name in PEERS:
        if (peers.venv_of(name) / "bin" / "python").exists():
            modes[name] = run_peer(name)
        else:
            print(f"peer {name}: no venv at {peers.venv_of(name)} (bench/peers.py setup {name}); skipped", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    order = list(modes)
    for rnd in range(-WARMUP, RUNS):
        rotated = order[rnd % len(order) :] + order[: rnd % len(order)]
        for mode in rotated:
            row = modes[mode](head, py_modules)
            row.update({"round": rnd, "load": loadavg()})
            print(f"round {rnd} {mode}: {json.dumps(row)}", flush=True)
            if rnd >= 0:
                runs[mode].append(row)
    return runs


# -- (1d) and (3) deferrable, through a real scheduler + triggerer ---------------------------------------------


def _iso(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _wait_for(what: str, check: Any, timeout: float, interval: float) -> Any:
    import contextlib

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            value = check()
            if value:
                return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_standalone(dags: tuple[str, ...] = ("bench_overhead_deferrable",)) -> tuple[Any, Any, Path]:
    """``airflow standalone`` (api-server, scheduler, dag-processor, triggerer, LocalExecutor) on SQLite, in its
    own session; the connection and storage come from this process's environment."""
    import httpx

    from airflow_ray_train.local_cluster import free_port

    home = Path(tempfile.mkdtemp(prefix="standalone_", dir=ROOT))  # one per section
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home / "home"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("BENCH_RECORD", None)
    if PROVIDER_SRC:  # "before": the provider as it was at another commit, first on the path
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PROVIDER_SRC, env.get("PYTHONPATH")]))
    log_path = home / "standalone.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        _wait_for("the api-server", lambda: client.get("/api/v2/monitor/health").status_code == 200, 300, 2)
        client.headers["Authorization"] = f"Bearer {client.get('/auth/token').json()['access_token']}"
        for dag in dags:
            _wait_for(f"{dag} to be parsed", lambda d=dag: client.get(f"/api/v2/dags/{d}").status_code == 200, 240, 2)
            client.patch(f"/api/v2/dags/{dag}", json={"is_paused": False}).raise_for_status()
    except BaseException:
        print(log_path.read_text(errors="replace")[-6000:], flush=True)
        stop_standalone(process)
        raise
    return process, client, log_path


def stop_standalone(process: Any) -> None:
    import contextlib
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def run_deferrable(head: Any, client: Any) -> dict[str, Any]:
    """(d): trigger the deferrable DAG over REST; done when the REST API reports the run's end (polled 4/s)."""
    dag = "bench_overhead_deferrable"
    started = time.perf_counter()
    response = client.post(f"/api/v2/dags/{dag}/dagRuns", json={"logical_date": None})
    response.raise_for_status()
    run_id = response.json()["dag_run_id"]

    def done() -> str | None:
        state = client.get(f"/api/v2/dags/{dag}/dagRuns/{run_id}").json()["state"]
        return state if state in ("success", "failed") else None

    state = _wait_for(f"run {run_id}", done, 900, 0.25)
    wall = time.perf_counter() - started
    if state != "success":
        raise RuntimeError(f"(d) run {run_id} ended {state}")
    ti = client.get(f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/train").json()
    xcom = client.get(
        f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/train/xcomEntries/job_id",
        params={"deserialize": True, "stringify": False},
    ).json()["value"]
    info = job_info(head, str(xcom))
    return {
        "wall_s": wall,
        "task_s": _iso(ti["end_date"]) - _iso(ti["start_date"]),
        "job_s": (info["end_time"] - info["start_time"]) / 1000,
        "latency_s": _iso(ti["end_date"]) - info["end_time"] / 1000,
        "try_number": ti.get("try_number"),
    }


def bench_deferrable(head: Any, py_modules: list[str]) -> dict[str, Any]:
    """(b) and (d) alternating while `airflow standalone` runs, so both see the same load."""
    process, client, _ = start_standalone()
    runs: dict[str, list[dict[str, Any]]] = {"b": [], "d": []}
    try:
        for rnd in range(-WARMUP, RUNS):
            for mode in ("b", "d") if rnd % 2 == 0 else ("d", "b"):
                row = run_cli(head, py_modules) if mode == "b" else run_deferrable(head, client)
                row.update({"round": rnd, "load": loadavg()})
                print(f"deferrable round {rnd} {mode}: {json.dumps(row)}", flush=True)
                if rnd >= 0:
                    runs[mode].append(row)
    finally:
        client.close()
        stop_standalone(process)
    return runs


# -- (4) scale --------------------------------------------------------------------------------------------------


def _process_tree(root: Any) -> list[Any]:
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _triggerer(standalone: Any) -> Any:
    """The ``airflow triggerer`` process standalone started (its trigger runner is a child of it)."""
    import psutil

    for proc in psutil.Process(standalone.pid).children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "triggerer" in cmd and "standalone" not in cmd:
            return proc
    raise RuntimeError("no triggerer process under airflow standalone")


def _cpu_s(procs: list[Any]) -> float:
    import psutil

    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def _rss_mib(procs: list[Any]) -> float:
    import psutil

    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _dashboard_requests(head: Any, since: float, until: float) -> dict[str, int]:
    """Requests the dashboard served between two times, from its access log, by kind. In the scale window
    only the triggerer talks to Ray: every task is deferred and this process makes no Ray call."""
    import re
    from datetime import datetime

    counts: dict[str, int] = {}
    pattern = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*'(GET|POST|PUT) (\S+) HTTP[^']*'")
    log = Path(head.temp_dir) / "session_latest" / "logs" / "dashboard.log"
    for line in log.read_text(errors="replace").splitlines():
        match = pattern.match(line)
        if not match:
            continue
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, like the log
        if since <= when <= until:
            path = match.group(3)
            kind = "logs/tail" if path.endswith("/logs/tail") else "logs" if path.endswith("/logs") else "status"
            key = f"{match.group(2)} {kind}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _ti_states(client: Any, dag: str, run_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    response.raise_for_status()
    return list(response.json()["task_instances"])


def run_scale(head: Any, client: Any, standalone: Any, n: int) -> dict[str, Any]:
    """Trigger ``bench_scale_<n>`` (n mapped tasks, each a deferred waiting job); once all n are deferred and
    their jobs run, watch the triggerer for ``SCALE_WINDOW_S``; then release the jobs and time the finish."""
    from airflow_ray_train.hooks.ray_train import RayTrainHook

    dag = f"bench_scale_{n}"
    triggerer = _triggerer(standalone)
    hook = RayTrainHook()
    ramp_started = time.time()
    response = client.post(f"/api/v2/dags/{dag}/dagRuns", json={"logical_date": None})
    response.raise_for_status()
    run_id = response.json()["dag_run_id"]

    def all_deferred() -> bool:
        tis = _ti_states(client, dag, run_id)
        return len(tis) == n and all(ti["state"] == "deferred" for ti in tis)

    _wait_for(f"{n} deferred tasks", all_deferred, 900, 1.0)
    time.sleep(10)  # the triggers' start-up (connection lookup, stream opening) is not the steady cost
    ours = [j for j in hook.list_jobs() if j["metadata"].get("bench") == "scale" and j["status"] == "RUNNING"]
    ramp_s = time.time() - ramp_started
    procs = _process_tree(triggerer)
    cpu0, wall0, rss = _cpu_s(procs), time.time(), [_rss_mib(procs)]
    held: list[int] = []
    while time.time() - wall0 < SCALE_WINDOW_S:
        time.sleep(5)
        procs = _process_tree(triggerer)
        rss.append(_rss_mib(procs))
        held.append(sum(ti["state"] in ("running", "queued") for ti in _ti_states(client, dag, run_id)))
    wall1 = time.time()
    cpu = _cpu_s(_process_tree(triggerer)) - cpu0
    window = wall1 - wall0
    requests = _dashboard_requests(head, wall0, wall1)
    release = Path(os.environ["BENCH_RELEASE_DIR"]) / dag
    release.touch()
    released = time.time()

    def finished() -> str | None:
        state = client.get(f"/api/v2/dags/{dag}/dagRuns/{run_id}").json()["state"]
        return state if state in ("success", "failed") else None

    state = _wait_for(f"{dag} to finish", finished, 900, 0.5)
    tis = _ti_states(client, dag, run_id)
    jobs = {j["submission_id"]: j for j in hook.list_jobs() if j["metadata"].get("bench") == "scale"}
    hook.close()
    latencies = []
    for ti in tis:
        entry = client.get(
            f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/wait/xcomEntries/return_value",
            params={"map_index": ti["map_index"], "deserialize": True, "stringify": False},
        )
        job = jobs.get(str(entry.json().get("value"))) if entry.status_code == 200 else None
        if job is not None and ti.get("end_date") and job.get("end_time"):
            latencies.append(_iso(ti["end_date"]) - job["end_time"] / 1000)
    job_ends = [j["end_time"] / 1000 for j in jobs.values() if j["end_time"] and j["end_time"] / 1000 >= released]
    last_ti_end = max(_iso(ti["end_date"]) for ti in tis if ti.get("end_date"))
    total_requests = sum(requests.values())
    return {
        "n": n,
        "jobs_running_at_start": len(ours),
        "ramp_s": ramp_s,
        "window_s": window,
        "triggerer_cpu_s": cpu,
        "triggerer_core_pct": 100 * cpu / window,
        "cpu_s_per_job_minute": cpu / (n * window / 60),
        "triggerer_rss_mib_max": max(rss),
        "triggerer_rss_mib_start": rss[0],
        "requests": requests,
        "requests_per_job_minute": total_requests / (n * window / 60),
        "worker_slots_held_max": max(held) if held else None,
        "state": state,
        "release_to_last_task_end_s": last_ti_end - released,
        "completion_latency_s": sorted(latencies),
        "release_to_last_job_end_s": (max(job_ends) - released) if job_ends else None,
        "load": loadavg(),
    }


def bench_throughput(head: Any) -> dict[str, Any]:
    """(5): the Lightning example through the runtime vs a hand-written script; 1 vs 2 workers
    (``bench/throughput.py``). Its drivers are fresh processes, so it needs no warm-up round."""
    import throughput

    return dict(throughput.bench_throughput(head, RUNS, int(os.environ.get("BENCH_TP_WARMUP", "0")), ROOT / "tp"))


def bench_scale(head: Any) -> dict[str, Any]:
    """1, 10, 50 deferred jobs in turn in one ``airflow standalone``; first its triggerer idle (no trigger)."""
    os.environ["BENCH_RELEASE_DIR"] = str(ROOT / "release")
    (ROOT / "release").mkdir(exist_ok=True)
    dags = tuple(f"bench_scale_{n}" for n in SCALE_NS)
    process, client, _ = start_standalone(dags)
    rows = []
    try:
        time.sleep(15)  # let standalone settle before the idle baseline
        triggerer = _triggerer(process)
        procs = _process_tree(triggerer)
        cpu0, wall0 = _cpu_s(procs), time.time()
        time.sleep(SCALE_WINDOW_S / 2)
        idle = {"window_s": time.time() - wall0, "triggerer_cpu_s": _cpu_s(_process_tree(triggerer)) - cpu0}
        idle["triggerer_core_pct"] = 100 * idle["triggerer_cpu_s"] / idle["window_s"]
        idle["triggerer_rss_mib"] = _rss_mib(_process_tree(triggerer))
        print(f"scale idle: {json.dumps(idle)}", flush=True)
        for n in SCALE_NS:
            row = run_scale(head, client, process, n)
            print(f"scale {n}: {json.dumps(row)}", flush=True)
            rows.append(row)
    finally:
        client.close()
        stop_standalone(process)
    return {"provider": PROVIDER_SRC or "this checkout", "idle": idle, "rows": rows}


# -- report -----------------------------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def plots(results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    runs = results.get("overhead")
    if runs:
        modes = list(runs)
        fig, ax = plt.subplots(figsize=(8, 4))
        for i, mode in enumerate(modes):
            walls = [r["wall_s"] for r in runs[mode]]
            ax.scatter([i] * len(walls), walls, alpha=0.6)
            ax.hlines(med(walls), i - 0.25, i + 0.25, colors="black")
        short = {
            "a": "(a) driver",
            "b": "(b) ray job submit",
            "c": "(c) operator sync",
            "astro": "astro-provider-ray",
            "google": "Google provider",
        }
        ax.set_xticks(range(len(modes)), [short.get(m, m) for m in modes], fontsize=8)
        ax.set_ylabel("wall time (s)")
        ax.set_title("Same 2-worker Ray Train job: wall time per run (line = median)")
        fig.tight_layout()
        fig.savefig(OUT / "overhead.png", dpi=100)
        written.append("overhead.png")
        plt.close(fig)

    series = []
    for label, section, mode in (
        ("sync before", "overhead_before", "c"),
        ("sync after", "overhead", "c"),
        ("deferrable before", "deferrable_before", "d"),
        ("deferrable after", "deferrable", "d"),
    ):
        if results.get(section):
            series.append((label, [r["latency_s"] for r in results[section][mode]]))
    if series:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        for i, (_, lat) in enumerate(series):
            ax.scatter([i] * len(lat), lat, alpha=0.6)
            ax.hlines(med(lat), i - 0.25, i + 0.25, colors="black")
        ax.axhline(1.0, color="red", linestyle="--", linewidth=0.8, label="target sync 1 s")
        ax.axhline(2.0, color="orange", linestyle="--", linewidth=0.8, label="target deferrable 2 s")
        ax.set_xticks(range(len(series)), [name for name, _ in series], fontsize=8)
        ax.set_ylabel("Ray end_time -> task done (s)")
        ax.set_title("Completion latency, before and after the log stream")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(OUT / "latency.png", dpi=100)
        written.append("latency.png")
        plt.close(fig)

    keys = (("before", "scale_before"), ("after", "scale"))
    scale = [(label, results[key]) for label, key in keys if results.get(key)]
    if scale:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        for label, data in scale:
            ns = [r["n"] for r in data["rows"]]
            left.plot(ns, [r["triggerer_core_pct"] for r in data["rows"]], marker="o", label=label)
            right.plot(ns, [r["requests_per_job_minute"] for r in data["rows"]], marker="o", label=label)
        left.axhline(5.0, color="red", linestyle="--", linewidth=0.8, label="target 5%")
        left.set_xlabel("deferred jobs")
        left.set_ylabel("triggerer CPU, % of one core")
        right.set_xlabel("deferred jobs")
        right.set_ylabel("HTTP requests per job-minute")
        left.legend(fontsize=8)
        right.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(OUT / "scale.png", dpi=100)
        written.append("scale.png")
        plt.close(fig)
    return written


def _cells(values: list[float]) -> str:
    return " | ".join(f"{v:.2f}" for v in values)


def _table(rows: list[tuple[str, list[float], str]]) -> list[str]:
    width = max(len(values) for _, values, _ in rows)
    out = [
        "| | " + " | ".join(f"run {i + 1}" for i in range(width)) + " | median | target |",
        "|---|" + "---:|" * (width + 1) + "---|",
    ]
    for label, values, target in rows:
        pad = " | " * (width - len(values))
        out.append(f"| {label} | {_cells(values)}{pad} | {med(values):.2f} | {target} |")
    return out


def _ratios(runs: dict[str, list[dict[str, Any]]], pairs: list[tuple[str, str, str]]) -> list[str]:
    out = ["| ratio | of medians | median of per-round ratios | target |", "|---|---:|---:|---|"]
    for num, den, target in pairs:
        if num not in runs or den not in runs:
            continue
        per_round = [n["wall_s"] / d["wall_s"] for n, d in zip(runs[num], runs[den], strict=False)]
        of_medians = med([r["wall_s"] for r in runs[num]]) / med([r["wall_s"] for r in runs[den]])
        out.append(f"| ({num})/({den}) | {of_medians:.3f} | {med(per_round):.3f} | {target} |")
    return out


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _targets(results: dict[str, Any]) -> list[str]:
    out = []
    runs, deferred, shipping = results.get("overhead"), results.get("deferrable"), results.get("shipping")
    before, dbefore = results.get("overhead_before"), results.get("deferrable_before")

    def was(section: dict[str, Any] | None, fn: Any) -> str:
        return f" (before: {fn(section):.3f})" if section else ""

    if runs:

        def cb(r: dict[str, Any]) -> float:
            return med([x["wall_s"] for x in r["c"]]) / med([x["wall_s"] for x in r["b"]])

        def lat(r: dict[str, Any]) -> float:
            return med([x["latency_s"] for x in r["c"]])

        ca = med([r["wall_s"] for r in runs["c"]]) / med([r["wall_s"] for r in runs["a"]])
        out.append(
            f"- (c)/(b) = {cb(runs):.3f}{was(before, cb)}: target <= 1.05 {_verdict(cb(runs) <= 1.05)}; "
            f"(c)/(a) = {ca:.3f}"
        )
        out.append(
            f"- sync completion latency = {lat(runs):.2f} s{was(before, lat)}: target <= 1 s "
            f"{_verdict(lat(runs) <= 1.0)}"
        )
    if deferred:

        def db(r: dict[str, Any]) -> float:
            return med([x["wall_s"] for x in r["d"]]) / med([x["wall_s"] for x in r["b"]])

        def dlat(r: dict[str, Any]) -> float:
            return med([x["latency_s"] for x in r["d"]])

        out.append(f"- (d)/(b) = {db(deferred):.3f}{was(dbefore, db)}: target <= 1.10 {_verdict(db(deferred) <= 1.10)}")
        out.append(
            f"- deferrable completion latency = {dlat(deferred):.2f} s{was(dbefore, dlat)}: target <= 2 s "
            f"{_verdict(dlat(deferred) <= 2.0)}"
        )
    if shipping:
        repeat = max(r["bytes_uploaded"] for r in shipping["rows"][1:])
        out.append(f"- repeat submit uploads {repeat} bytes: target 0 {_verdict(repeat == 0)}")
    scale = results.get("scale")
    if scale:
        top = max(scale["rows"], key=lambda r: r["n"])
        prev = results.get("scale_before")
        was_pct = ""
        if prev:
            ptop = [r for r in prev["rows"] if r["n"] == top["n"]]
            was_pct = f" (before: {ptop[0]['triggerer_core_pct']:.1f}%)" if ptop else ""
        out.append(
            f"- {top['n']} deferred jobs: triggerer {top['triggerer_core_pct']:.1f}% of one core{was_pct} "
            f"(its idle baseline {scale['idle']['triggerer_core_pct']:.1f}% included): target < 5% "
            f"{_verdict(top['triggerer_core_pct'] < 5.0)}; worker slots held {top['worker_slots_held_max']}: "
            f"target 0 {_verdict(top['worker_slots_held_max'] == 0)}"
        )
    tp = results.get("throughput")
    if tp:
        import throughput

        out.extend(throughput.target_lines(tp))
    return out


def _section_scale(results: dict[str, Any]) -> list[str]:
    lines = [
        "## (4) Scale: N deferred jobs watched by one triggerer",
        "",
        "`bench_scale_<N>` (`bench/bench_dags.py`): N mapped tasks, each submits a job that only waits (it prints "
        "a line every 5 s until the benchmark creates its release file) and defers on the provider's "
        "`RayTrainJobTrigger` with `[ray_train] poll_interval`, as `RayTrainOperator(deferrable=True)` does. "
        f"Once all N are deferred and 10 s have passed, a {SCALE_WINDOW_S:.0f} s window: the CPU time "
        "(user+system, psutil) of the `airflow triggerer` process and its children (the trigger runner), its RSS "
        "every 5 s, the task states every 5 s (running/queued = worker slots held), and the requests Ray's "
        "dashboard logged in its access log in the window (only the triggerer talks to Ray then). Then the jobs are "
        "released together. One `airflow standalone` (LocalExecutor, `[core] parallelism` 4) for all N. "
        "'before' is the same harness with the provider at git 7ef15e1 first on the standalone's PYTHONPATH "
        "(`make bench` does this with `git archive`).",
        "",
        "| provider | N | triggerer % of one core | CPU s per job-minute | RSS MiB (max) | requests per "
        "job-minute | requests in window | worker slots held (max) | all N tasks done after release (s) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for label, key in (("before", "scale_before"), ("after", "scale")):
        data = results.get(key)
        if not data:
            continue
        idle = data["idle"]
        lines.append(
            f"| {label} | 0 (idle) | {idle['triggerer_core_pct']:.2f} | | {idle['triggerer_rss_mib']:.0f} | | | | |"
        )
        for r in data["rows"]:
            lines.append(
                f"| {label} | {r['n']} | {r['triggerer_core_pct']:.2f} | {r['cpu_s_per_job_minute']:.3f} | "
                f"{r['triggerer_rss_mib_max']:.0f} | {r['requests_per_job_minute']:.1f} | {r['requests']} | "
                f"{r['worker_slots_held_max']} | {r['release_to_last_task_end_s']:.1f} |"
            )
    after = results.get("scale")
    if after:
        lines += ["", "Completion latency per task when all N end at once (task `end_date` - job `end_time`, s):", ""]
        for r in after["rows"]:
            lat = r.get("completion_latency_s") or []
            if lat:
                lines.append(
                    f"- N={r['n']}: median {med(lat):.2f}, min {min(lat):.2f}, max {max(lat):.2f} (the resumed "
                    "tasks queue for the executor's 4 slots: each `execute_complete` is a new task process)"
                )
    lines += ["", "![scale](scale.png)", ""]
    return lines


def report(results: dict[str, Any]) -> str:
    info, sections = results["machine"], results["sections"]
    lines = [
        "# Benchmarks (issue 6)",
        "",
        "Generated by `make bench` (`bench/run.py`; `bench/run.py --report-only` rewrites this page from "
        "`bench/results.json`, which holds every raw number). This machine is shared (2 cores) and other work "
        "ran beside some sections: read the ratios, not the absolute times. 'Before' numbers are the provider "
        "before the log stream (git 93be6ba/7ef15e1: a status and a full-log GET every 2 s); 'after' is this "
        "checkout.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {info['cpu']}; `nproc`: {info['nproc']}; {info['platform']}",
        f"- Python {info['python']}; Ray {info['ray']}; Airflow {info['airflow']}; torch {info['torch']}; "
        f"httpx {info['httpx']}; provider at git {info['git']}",
        "",
        "```",
        "$ free -h",
        info["free_h"],
        "```",
        "",
        "Each section: when it ran, the command, and the load average (1/5/15 min) before and after it.",
        "",
    ]
    for name, sec in sections.items():
        lines.append(
            f"- {name}: {sec['date_utc']} UTC, `{sec['command']}`, load {sec['load_start']} -> {sec['load_end']}"
        )
    lines += [
        "",
        "## What runs",
        "",
        "- A private Ray head per `bench/run.py` invocation: `airflow_ray_train.local_cluster.start_ray_head("
        "num_cpus=4)` (own temp dir, ports and token), stopped with `head.stop()`.",
        f"- The job: `{TRAIN_FUNC}`, `train_loop_config={json.dumps(TRAIN_LOOP_CONFIG)}`, "
        f"`scaling_config={json.dumps(SCALING_CONFIG)}`, local storage.",
        "- (a) `RAY_ADDRESS=<gcs> RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... PYTHONPATH=example_dags:. "
        'RAY_JOB_CONFIG_JSON_ENV_VAR=\'{"runtime_env": {"py_modules": [<same gcs:// URIs>]}}\' '
        "python -m airflow_ray_train.runtime b64:<spec>`: the same driver as a plain Ray driver, with the same "
        "shipped code (that env var is how the Jobs API's supervisor hands a driver its runtime_env).",
        "- (b) `RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... ray job submit --address http://127.0.0.1:<port> "
        "--submission-id <id> --runtime-env-json '{\"py_modules\": [<the gcs:// URIs the hook uploaded>]}' "
        "-- python -m airflow_ray_train.runtime b64:<spec>`. It waits by default: Ray 2.60's CLI has "
        "`--no-wait` but no `--wait` flag.",
        "- (c) `bench/bench_dags.py` `bench_overhead_sync`: one `RayTrainOperator` (subclassed only to record "
        "when `execute()` started and returned and to count the hook's HTTP requests), run by `dag.test()` in "
        "the benchmark process; connection `ray_train_default` = the head (env `AIRFLOW_CONN_...`).",
        "- Peers, in the same rounds as (a)-(c) (`bench/peers.py`): the same entrypoint and py_modules through "
        "astro-provider-ray 0.4.0's `SubmitRayJob` and the Google provider 22.8.0's `RaySubmitJobOperator`, each "
        "by `dag.test()` in its own venv (Airflow 3.3.2 + Ray 2.60.0 + the peer; `make bench` creates them).",
        "- (d) `bench_overhead_deferrable` (plain `RayTrainOperator(deferrable=True)`) in `airflow standalone` "
        "(scheduler, triggerer, LocalExecutor, SQLite), triggered by `POST /api/v2/dags/{id}/dagRuns`; wall = "
        "POST -> the REST API reports the run finished (polled every 0.25 s). Interleaved with (b) while "
        "standalone runs, so (d)/(b) compares runs under the same load.",
        "- Rounds: warm-up round(s) first (not recorded), then recorded rounds; each round runs every mode once, "
        "in an order rotated every round.",
        "",
    ]
    summary = _targets(results)
    if summary:
        lines += ["## Targets at a glance (medians on this machine)", "", *summary, ""]
    lines += [IMPROVED, ""]
    shipping = results.get("shipping")
    if shipping:
        lines += [
            "## (2) Shipping: `RayTrainHook.build_runtime_env` on a fresh head (runtime + `ray_train_examples`)",
            "",
            "| submit | bytes uploaded | seconds |",
            "|---|---:|---:|",
        ]
        for row in shipping["rows"]:
            lines.append(f"| {row['attempt']} | {row['bytes_uploaded']} | {row['seconds']:.3f} |")
        lines += [
            "",
            f"py_modules: `{shipping['rows'][0]['py_modules']}`. Target: a repeat submit uploads 0 bytes "
            "(met: one `GET /api/packages/gcs/<name>` per package, no PUT).",
            "",
        ]
    for key, title in (("overhead", "after"), ("overhead_before", "before")):
        runs = results.get(key)
        if not runs:
            continue
        modes = list(runs)
        lines += [f"## (1) Overhead, {title}: wall time per run (s)", ""]
        lines += _table([(LABELS.get(m, m), [r["wall_s"] for r in runs[m]], "") for m in modes])
        lines += ["", "Ratios (the per-round ratio pairs runs that ran back to back):", ""]
        pairs = [("b", "a", ""), ("c", "a", ""), ("c", "b", "<= 1.05")]
        pairs += [(p, "b", "") for p in modes if p not in MODES] + [(p, "c", "") for p in modes if p not in MODES]
        lines += _ratios(runs, pairs)
        lines += [
            "",
            "Where (c)'s time goes (medians): Ray's own job time (`end_time - start_time`) "
            f"{med([r['job_s'] for r in runs['c']]):.2f} s; `execute()` "
            f"{med([r['execute_s'] for r in runs['c']]):.2f} s; the whole `dag.test()` "
            f"{med([r['wall_s'] for r in runs['c']]):.2f} s. For (b): job "
            f"{med([r['job_s'] for r in runs['b']]):.2f} s, CLI wall {med([r['wall_s'] for r in runs['b']]):.2f} s.",
            "",
            "Load average when each run ended:",
            "",
        ]
        for mode in modes:
            lines.append(f"- {mode}: " + "; ".join(r["load"] for r in runs[mode]))
        lines += [""]
        if key == "overhead":
            lines += ["![overhead](overhead.png)", "", PEERS_TEXT, ""]
    for key, title in (("deferrable", "after"), ("deferrable_before", "before")):
        deferred = results.get(key)
        if not deferred:
            continue
        lines += [f"## (1d) Deferrable through the real triggerer, against (b) under the same load, {title}", ""]
        lines += _table(
            [
                ("(b) ray job submit", [r["wall_s"] for r in deferred["b"]], ""),
                ("(d) deferrable DAG run (POST -> run done)", [r["wall_s"] for r in deferred["d"]], ""),
                ("(d) task start -> end", [r["task_s"] for r in deferred["d"]], ""),
            ]
        )
        lines += [""]
        lines += _ratios(deferred, [("d", "b", "<= 1.10")])
        lines += [
            "",
            "Load average when each run ended: "
            + "; ".join(f"{m}: " + ", ".join(r["load"] for r in deferred[m]) for m in ("b", "d")),
            "",
        ]
    rows = []
    for key, title in (("overhead_before", "before"), ("overhead", "after")):
        if results.get(key):
            runs = results[key]
            rows += [
                (f"{title}: (b) `ray job submit` exits", [r["latency_s"] for r in runs["b"]], ""),
                (f"{title}: (c) sync, `execute()` returns", [r["latency_s"] for r in runs["c"]], "<= 1 s"),
                (f"{title}: (c) sync, `dag.test()` returns", [r["latency_dagtest_s"] for r in runs["c"]], ""),
            ]
    for key, title in (("deferrable_before", "before"), ("deferrable", "after")):
        if results.get(key):
            latencies = [r["latency_s"] for r in results[key]["d"]]
            rows += [(f"{title}: (d) deferrable, task `end_date`", latencies, "<= 2 s")]
    if rows:
        lines += ["## (3) Completion latency (s): Ray's job `end_time` -> the caller is done", ""]
        lines += _table(rows)
        lines += [
            "",
            "`end_time` is Ray's (ms, stamped by the job supervisor); the other end is `time.time()` in the "
            "benchmark process, or the task instance's `end_date` for (d); same machine, same clock.",
            "",
            "![latency](latency.png)",
            "",
        ]
    for key, title in (("overhead_before", "before"), ("overhead", "after")):
        if results.get(key):
            lines += [f"HTTP requests the hook sent per (c) run, {title} (method, kind):", ""]
            lines += [f"- {r['requests']} (bytes uploaded {r['bytes_uploaded']})" for r in results[key]["c"]]
            lines += [""]
    if results.get("scale") or results.get("scale_before"):
        lines += _section_scale(results)
    if results.get("throughput"):
        import throughput

        lines += [*throughput.throughput_section(results["throughput"]), "", "![throughput](throughput.png)", ""]
    lines += [NOTES]
    return "\n".join(lines)


IMPROVED = """## What was improved, and why (before -> after)

- **Completion was noticed by sleeping between polls.** Before: `wait_for_job` and the trigger did GET
  `/api/jobs/{id}`, GET `/api/jobs/{id}/logs` (the *whole* log, every time: O(n^2) bytes over a long job),
  then slept `poll_interval` (2 s). The end was seen 0-2 s late, plus, for the deferrable path, the
  scheduler's pickup. After: both follow the job's log over the Jobs API's websocket
  (`/api/jobs/{id}/logs/tail`): new lines arrive as Ray writes them, never twice. The runtime driver's last
  line is its result manifest: when it goes by, the status is polled every 0.2 s until Ray marks the job
  done; when Ray closes the stream (the job ended, with or without a manifest) it is polled at once. The
  status poll itself became a 5 s backstop (`[ray_train] poll_interval`, default 5), so a waiting job costs
  a twelfth of a request per second instead of a full-log download every 2 s. Where the websocket cannot be
  opened (a proxy without websockets), both fall back to the old polling, tested with a stub server.
- **Closing the stream cost 2 s.** Ray answers a websocket close only after its next 1 s file poll; a 2 s
  close timeout showed as 2 s of latency in the first cut. The close timeout is now 0.2 s.
- **The triggerer paid httpx's CPU per poll.** `AsyncRayTrainHook` moved to aiohttp (measured here: ~0.5 ms
  of CPU per status GET against ~1.5 ms with `httpx.AsyncClient`), with one session per trigger reused for
  every request and for the websocket.
- **Ray's own dashboard proxy breaks compressed websockets.** With the `websockets` client's default
  permessage-deflate, Ray 2.60's dashboard (which proxies the stream from its job module) logged
  `Unknown msg type: 258` and closed the stream after ~3 s; compression is off now (Ray's own CLI does not
  ask for it either).
- **Where it lands.** Ray's tail handler reads the log file in 1 s steps, so a line reaches Airflow up to
  ~1-2 s after the driver printed it; the manifest line usually arrives before Ray marks the job finished
  (the driver still shuts Ray down), so the fast polls catch the end within ~0.2 s of it.
"""


PEERS_TEXT = """### Peers

Both peers install beside Airflow 3.3.2 + Ray 2.60.0 (Python 3.11) and ran the same job: the same
`python -m airflow_ray_train.runtime <spec>` entrypoint and `py_modules`, through `dag.test()` from their own
venvs (`bench/peers.py`). **astro-provider-ray 0.4.0** (its last release) warns on import that it is no longer
maintained and imports Airflow's deprecated `airflow.utils.context` shim; 0.3.1 fails on the current Kubernetes
provider (`ImportError: cannot import name 'PodOperatorHookProtocol'`). Its `SubmitRayJob` always defers to
its trigger (`dag.test()` runs the trigger in line), its hook subclasses `KubernetesHook` (so the Kubernetes
provider is required, and pytest too), and it cannot set a submission id. **apache-airflow-providers-google
22.8.0**'s `RaySubmitJobOperator` accepts a plain `http://` dashboard address and uses no GCP credentials,
but still needs a (possibly empty) `google_cloud_default` connection; it brings about 60 Google libraries
(a 2.1 GB venv), polls every 5 s (fixed), and returns successfully even when the Ray job ends FAILED
(`bench/peers.py` checks the job's status on the head itself). Both need Ray installed next to Airflow;
airflow-ray-train needs only `httpx`, `aiohttp` and `websockets` there.
"""


NOTES = """## Noticed and left

- **Scale, 50 deferred jobs: 10.6% of one core, over the 5% target** (before: 17.3%). What went down is the
  provider's part: requests per job-minute 57 -> 12 (no log downloads; one status GET per 5 s), RSS 466 ->
  431 MiB. The trigger code itself is not the rest: 50 `RayTrainJobTrigger.run()` in one plain asyncio
  process, same waiting jobs, cost 1.0% of a core at `poll_interval` 5 s (3.6% at 1 s; a 30 s window after
  10 s of settling, `/tmp` script, not part of `make bench`). So about 8 points are spent in the triggerer
  process around the triggers (linear, ~0.19 points per trigger: N=1 +0.2, N=10 +1.9, N=50 +9.3 over the
  idle 1.3%), and each job here prints a line every 5 s that the triggerer forwards to the task's log.
  Not profiled yet (py-spy on the trigger runner during the window is the next step); if it is the log
  forwarding, logging one record per stream message (up to 10 lines) instead of per line would cut it for
  chatty jobs.
- **Throughput: 0.944 of medians (0.974 median of per-round ratios)**, with the workers' CPU per sample 1.08x
  in this run; the helper's 10-round A/B of the two training loops inside one set of Ray workers gave 0.996
  samples/s and 1.002 CPU per sample, and single fits swing 0.78-1.63x here. Nothing per-sample differs: the
  runtime adds a progress print every 50 steps on rank 0 and one report record per epoch. The cores used
  outside the workers during the fit were 0.23 (runtime) vs 0.15 (hand-written): the runtime's driver also
  has its recorder actor, and its log is streamed; not separated further. Why 2 workers were slower than 1:
  a 38k-parameter model on 2 cores, where the per-step gradient all-reduce and `sync_dist` dominate.
- A job that prints no result manifest (the scale section's `sh` loops, or a driver that crashed) is noticed
  when Ray closes the log stream, 1-3 s after it ended (Ray's 1 s file polling, twice): 2.66 s for N=1 in
  the scale table, against 1.66 s for the Train job of (d), whose manifest line starts the 0.2 s polls.
- (c)'s job itself runs ~0.8 s longer than (b)'s by Ray's own `end_time - start_time` (before and after
  alike), with the same entrypoint and py_modules; the operator's job also carries `env_vars` in its
  runtime_env and its log is followed while it runs. Not explained yet.

- The deferrable path's remaining latency is Airflow's: after the trigger's event, the triggerer hands it to
  the database, the scheduler queues the task on its next loop, and the executor starts a new task process
  that runs `execute_complete` (which reads the log once to find the manifest). With N jobs ending at once
  the resumed tasks queue for the executor's slots (scale table).
- (b) `ray job submit` exits 2-4 s after Ray's `end_time` (it tails the log to the end through the same
  websocket and Ray's 1 s file polling), so (c)/(b) flatters the operator; (c)/(a) is the honest overhead,
  and most of it is the Jobs API's own (job supervisor actor, runtime_env set-up of the py_modules).
- `dag.test()`'s first call in a process costs ~8 s more (DagBag fill, serialization): a harness cost, left
  out by the warm-up round.
"""


def main(argv: list[str]) -> int:
    from airflow_ray_train.local_cluster import start_ray_head

    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}
    results.setdefault("sections", {})
    if "--report-only" not in argv:
        wanted = os.environ.get("BENCH_SECTIONS", "shipping,overhead,deferrable,scale,throughput").split(",")
        results["machine"] = machine()
        temp_dir = tempfile.mkdtemp(prefix="art_bray_")
        head = start_ray_head(temp_dir=temp_dir, token=secrets.token_hex(16), num_cpus=4)
        try:
            os.environ["AIRFLOW_CONN_RAY_TRAIN_DEFAULT"] = json.dumps(
                {"conn_type": "ray_train", "host": head.dashboard_url, "password": head.token}
            )
            from airflow.utils import db

            db.resetdb()
            command = f"BENCH_SECTIONS={','.join(wanted)} BENCH_RUNS={RUNS} BENCH_WARMUP={WARMUP} bench/run.py"
            if PROVIDER_SRC:
                command = f"BENCH_PROVIDER_SRC={PROVIDER_SRC} PYTHONPATH={PROVIDER_SRC} {command}"
            # Shipping always runs first, on the fresh head: it uploads the packages the other sections use.
            py_modules: list[str] = []
            stages = (
                ("shipping", bench_shipping),
                ("overhead", lambda: bench_overhead(head, py_modules)),
                ("deferrable", lambda: bench_deferrable(head, py_modules)),
                ("scale_before" if PROVIDER_SRC else "scale", lambda: bench_scale(head)),
                ("throughput", lambda: bench_throughput(head)),
            )
            for name, stage in stages:
                if name.split("_")[0] not in wanted and name != "shipping":
                    continue
                if PROVIDER_SRC and not name.endswith("_before"):
                    name += "_before"  # the provider at another commit: its own keys
                started = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load_start": loadavg()}
                value = stage()
                if name.startswith("shipping"):
                    py_modules = value["rows"][0]["py_modules"]
                    if "shipping" not in wanted:
                        continue
                results[name] = value
                results["sections"][name] = {**started, "command": command, "load_end": loadavg()}
                print(f"{name}: {json.dumps(value)}", flush=True)
                results_file.write_text(json.dumps(results, indent=1, default=str))
        finally:
            head.stop()
            shutil.rmtree(temp_dir, ignore_errors=True)
    plots(results)
    if results.get("throughput"):
        import throughput

        throughput.throughput_plot(results["throughput"], OUT)
    (OUT / "REPORT.md").write_text(report(results))
    print(f"wrote {OUT / 'REPORT.md'}", flush=True)
    shutil.rmtree(ROOT, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)
