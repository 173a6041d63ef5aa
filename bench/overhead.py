"""Overhead: the same Train job (a) as a plain Ray driver on the cluster, (b) through ``ray job submit``, (c)
through ``RayTrainOperator`` (sync, ``dag.test()``), and through peer providers' operators, in rounds that
rotate the order so every mode sees the same load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import words
from harness import REPO, Bench, job_info, loadavg, make_spec, med, rounds

LABELS = {
    "a": "(a) driver directly on the cluster",
    "b": "(b) ray job submit (waits)",
    "c": "(c) RayTrainOperator sync (dag.test)",
    "astro": "astro-provider-ray 0.4.0 SubmitRayJob (dag.test)",
    "google": "Google provider 22.8.0 RaySubmitJobOperator (dag.test)",
}
SHORT = {
    "a": "(a) driver",
    "b": "(b) ray job submit",
    "c": "(c) operator sync",
    "astro": "astro-provider-ray",
    "google": "Google provider",
}
OURS = ("a", "b", "c")
#: (c)/(b): the operator against Ray's own CLI; (c)/(a): against the bare driver.
TARGET_C_B = 1.05
TARGET_C_A = 1.10
TARGET_SYNC_LATENCY_S = 1.0


def run_direct(bench: Bench) -> dict[str, Any]:
    """(a): the runtime driver as a plain Ray driver on the cluster (no Jobs API, no Airflow)."""
    spec = make_spec("a", bench.workspace.storage)
    env = dict(os.environ)
    env.update(
        {
            "RAY_ADDRESS": bench.head.gcs_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": bench.head.token,
            "PYTHONPATH": os.pathsep.join([str(REPO / "example_dags"), str(REPO)]),
            # What the Jobs API's supervisor hands its driver: the job's runtime_env (same py_modules as b/c),
            # so the Train workers import the same shipped code.
            "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"py_modules": bench.py_modules}}),
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


def run_cli(bench: Bench) -> dict[str, Any]:
    """(b): ``ray job submit`` with the same entrypoint and the already-uploaded py_modules."""
    head = bench.head
    spec = make_spec("b", bench.workspace.storage)
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
        json.dumps({"py_modules": bench.py_modules}),
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
        raise RuntimeError(
            f"(b) `ray job submit` exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    info = job_info(head, spec.submission_id)
    if info["status"] != "SUCCEEDED":
        raise RuntimeError(f"(b) failed ({info['status']}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {
        "wall_s": wall,
        "job_s": (info["end_time"] - info["start_time"]) / 1000,
        "latency_s": returned - info["end_time"] / 1000,
    }


def run_operator(bench: Bench) -> dict[str, Any]:
    """(c): ``RayTrainOperator`` sync, through ``dag.test()`` (the real task runner, in this process)."""
    from bench_dags import bench_sync

    record = bench.workspace.root / f"record-{uuid.uuid4().hex[:8]}.json"
    os.environ["BENCH_RECORD"] = str(record)
    started = time.perf_counter()
    dag_run = bench_sync.test()
    returned = time.time()
    wall = time.perf_counter() - started
    if str(dag_run.state) not in ("success", "DagRunState.SUCCESS"):
        raise RuntimeError(f"(c) dag run ended {dag_run.state}")
    rec = json.loads(record.read_text())
    info = job_info(bench.head, rec["job_id"])
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

    def run(bench: Bench) -> dict[str, Any]:
        import peers

        spec_arg = make_spec(name, bench.workspace.storage).to_arg()
        return dict(peers.run_peer(name, bench.head, bench.py_modules, spec_arg))

    return run


def run(bench: Bench) -> dict[str, list[dict[str, Any]]]:
    import peers

    modes = {"a": run_direct, "b": run_cli, "c": run_operator}
    for name in bench.settings.peers:
        if (peers.venv_of(name) / "bin" / "python").exists():
            modes[name] = run_peer(name)
        else:
            print(f"peer {name}: no venv at {peers.venv_of(name)} (bench/peers.py setup {name}); skipped", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for rnd, order in rounds(bench.settings.warmup, bench.settings.runs, list(modes)):
        for mode in order:
            row = modes[mode](bench)
            row.update({"round": rnd, "load": loadavg()})
            print(f"round {rnd} {mode}: {json.dumps(row)}", flush=True)
            if rnd >= 0:
                runs[mode].append(row)
    return runs


# -- report ---------------------------------------------------------------------------------------------------


def wall(runs: dict[str, list[dict[str, Any]]], mode: str) -> float:
    return med([r["wall_s"] for r in runs.get(mode, [])])


def targets(results: dict[str, Any]) -> list[str]:
    runs, before = results.get("overhead"), results.get("overhead_before")
    if not runs:
        return []

    def c_b(r: dict[str, Any]) -> float:
        return words.ratio(wall(r, "c"), wall(r, "b"))

    def c_a(r: dict[str, Any]) -> float:
        return words.ratio(wall(r, "c"), wall(r, "a"))

    def latency(r: dict[str, Any]) -> float:
        return words.median_of(r["c"], "latency_s")

    return [
        words.target_line("(c)/(b)", c_b, runs, before, TARGET_C_B),
        words.target_line("(c)/(a)", c_a, runs, before, TARGET_C_A),
        words.target_line(
            "sync completion latency", latency, runs, before, TARGET_SYNC_LATENCY_S, fmt=".2f", unit=" s"
        ),
    ]


def section(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, title in (("overhead", "after"), ("overhead_before", "before")):
        runs = results.get(key)
        if not runs:
            continue
        modes = list(runs)
        peers = [m for m in modes if m not in OURS]
        lines += [f"## Overhead, {title}: wall time per run (s)", ""]
        lines += words.table([(LABELS.get(m, m), [r["wall_s"] for r in runs[m]], "") for m in modes])
        lines += ["", "Ratios (the per-round ratio pairs runs that ran back to back):", ""]
        pairs = [("b", "a", ""), ("c", "a", f"<= {TARGET_C_A:.2f}"), ("c", "b", f"<= {TARGET_C_B:.2f}")]
        pairs += [(p, "b", "") for p in peers] + [(p, "c", "") for p in peers]
        lines += words.ratio_table(runs, pairs)
        lines += [
            "",
            f"By the medians: {words.faster('(c)', wall(runs, 'c'), '(b)', wall(runs, 'b'))}; "
            f"{words.faster('(c)', wall(runs, 'c'), '(a)', wall(runs, 'a'))}"
            + "".join(f"; {words.faster('(c)', wall(runs, 'c'), f'({p})', wall(runs, p))}" for p in peers)
            + ".",
            "",
            "Where (c)'s time goes (medians): Ray's own job time (`end_time - start_time`) "
            f"{words.median_of(runs['c'], 'job_s'):.2f} s; `execute()` {words.median_of(runs['c'], 'execute_s'):.2f} "
            f"s; the whole `dag.test()` {wall(runs, 'c'):.2f} s. For (b): job {words.median_of(runs['b'], 'job_s'):.2f}"
            f" s, CLI wall {wall(runs, 'b'):.2f} s.",
            "",
            "Load average when each run ended:",
            "",
        ]
        lines += [f"- {mode}: " + "; ".join(r["load"] for r in runs[mode]) for mode in modes]
        lines += [""]
        if key == "overhead":
            lines += ["![overhead](overhead.png)", ""]
            if peers:
                lines += [PEERS_TEXT, ""]
    return lines


def requests_section(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, title in (("overhead_before", "before"), ("overhead", "after")):
        if results.get(key):
            lines += [f"HTTP requests the hook sent per (c) run, {title} (method, kind):", ""]
            lines += [f"- {r['requests']} (bytes uploaded {r['bytes_uploaded']})" for r in results[key]["c"]]
            lines += [""]
    return lines


def plot(results: dict[str, Any], out: Path) -> list[str]:
    runs = results.get("overhead")
    if not runs:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(runs)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, mode in enumerate(modes):
        walls = [r["wall_s"] for r in runs[mode]]
        ax.scatter([i] * len(walls), walls, alpha=0.6)
        ax.hlines(med(walls), i - 0.25, i + 0.25, colors="black")
    ax.set_xticks(range(len(modes)), [SHORT.get(m, m) for m in modes], fontsize=8)
    ax.set_ylabel("wall time (s)")
    ax.set_title("Same 2-worker Ray Train job: wall time per run (line = median)")
    fig.tight_layout()
    fig.savefig(out / "overhead.png", dpi=100)
    plt.close(fig)
    return ["overhead.png"]


PEERS_TEXT = """### Peers

Both peers install beside Airflow 3.3.2 + Ray 2.60.0 (Python 3.11) and ran the same job: the same
`python -m airflow_ray_train.runtime <spec>` entrypoint and `py_modules`, through `dag.test()` from their own
venvs (`bench/peers.py`). **astro-provider-ray 0.4.0** (its last release) warns on import that it is no longer
maintained and imports Airflow's deprecated `airflow.utils.context` shim; 0.3.1 fails on the current Kubernetes
provider (`ImportError: cannot import name 'PodOperatorHookProtocol'`). Its `SubmitRayJob` always defers to
its trigger (`dag.test()` runs the trigger in line), its hook subclasses `KubernetesHook` (so the Kubernetes
provider is required, and pytest too), and it cannot set a submission id. **apache-airflow-providers-google
22.8.0**'s `RaySubmitJobOperator` accepts a plain `http://` dashboard address and uses no GCP credentials,
but still needs a (possibly empty) `google_cloud_default` connection; it brings about 60 Google libraries,
polls every 5 s (fixed), and returns successfully even when the Ray job ends FAILED (`bench/peers.py` checks
the job's status on the head itself). Both need Ray installed next to Airflow; airflow-ray-train needs only
`httpx`, `aiohttp` and `websockets` there."""
