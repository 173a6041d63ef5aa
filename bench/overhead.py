"""Overhead: the same Train job (a) as a plain Ray driver on the cluster, (b) through ``ray job submit``, (c)
through ``RayTrainOperator`` (sync, ``dag.test()``), and through peer providers' operators, in rounds that
rotate the order so every mode sees the same load."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import words
from harness import BENCH, REPO, Bench, job_info, loadavg, make_spec, med, rounds

LABELS = {
    "a": "(a) driver directly on the cluster",
    "b": "(b) ray job submit (waits)",
    "c": "(c) RayTrainOperator sync (dag.test)",
    "c-before": "(c-before) RayTrainOperator sync at BENCH_BEFORE_REF (dag.test)",
    "astro": "astro-provider-ray 0.4.0 SubmitRayJob (dag.test)",
    "google": "Google provider 22.8.0 RaySubmitJobOperator (dag.test)",
}
SHORT = {
    "a": "(a) driver",
    "b": "(b) ray job submit",
    "c": "(c) operator sync",
    "c-before": "(c) before",
    "astro": "astro-provider-ray",
    "google": "Google provider",
}
OURS = ("a", "b", "c", "c-before")
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
            # The head's processes have it (``start_ray_head``): its GCS listens on 127.0.0.1 only. Without
            # it, ``ray.init`` turns 127.0.0.1 into the machine's address and waits for a GCS never there.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
    )
    spawned = time.time()
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_ray_train_runtime", spec.to_arg()], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"(a) driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, **phases(proc.stderr + proc.stdout, spawned, spawned + wall)}


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
        "airflow_ray_train_runtime",
        spec.to_arg(),
    ]
    spawned = time.time()
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
        "submit_s": info["start_time"] / 1000 - spawned,
        **job_phases(bench.head, info),
    }


class OperatorWorker:
    """A long-lived ``bench/operator_worker.py`` running (c) for one provider: this checkout's, or the one at
    ``provider_src`` (first on its ``PYTHONPATH``)."""

    def __init__(self, bench: Bench, provider_src: str = "") -> None:
        env = {**os.environ, "BENCH_WORKSPACE": str(bench.workspace.root)}
        if provider_src:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [provider_src, env.get("PYTHONPATH")]))
        self.tail: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "operator_worker.py")],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=str(bench.workspace.root),  # not the repo root: it would put this checkout's provider first
        )
        ready = self._line("READY ")
        expected = Path(provider_src or REPO).resolve()
        if not Path(ready).resolve().is_relative_to(expected):
            raise RuntimeError(f"the (c) worker imported the provider from {ready}, not from {expected}")

    def _line(self, prefix: str) -> str:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
            self.tail = [*self.tail[-200:], line]
        raise RuntimeError("the (c) worker exited:\n" + "".join(self.tail))

    def run(self, record: Path) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{record}\n")
        self.process.stdin.flush()
        return dict(json.loads(self._line("RESULT ")))

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_operator(worker: OperatorWorker) -> Any:
    """(c): ``RayTrainOperator`` sync, through ``dag.test()`` (the real task runner) in ``worker``."""

    def run(bench: Bench) -> dict[str, Any]:
        record = bench.workspace.root / f"record-{uuid.uuid4().hex[:8]}.json"
        result = worker.run(record)
        if result["state"] not in ("success", "DagRunState.SUCCESS"):
            raise RuntimeError(f"(c) dag run ended {result['state']}:\n" + "".join(worker.tail[-60:]))
        rec = json.loads(record.read_text())
        info = job_info(bench.head, rec["job_id"])
        end = info["end_time"] / 1000
        return {
            "wall_s": result["wall_s"],
            "execute_s": rec["execute_returned"] - rec["execute_started"],
            "job_s": (info["end_time"] - info["start_time"]) / 1000,
            "latency_s": rec["execute_returned"] - end,
            "latency_dagtest_s": result["returned"] - end,
            "submit_s": info["start_time"] / 1000 - rec["execute_started"],
            "requests": rec["requests"],
            "bytes_uploaded": rec["bytes_uploaded"],
            **job_phases(bench.head, info),
        }

    return run


# -- the seconds before training starts, from Ray's own time stamps ---------------------------------------------

_LOG_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
#: The driver's first line: ``ray.init`` connecting to the cluster.
_DRIVER_RE = re.compile(_LOG_STAMP + r"\s+INFO worker\.py:\d+ -- ")
#: Ray Train names a checkpoint's folder by the time the worker reported it: the first one is the first report.
_REPORT_RE = re.compile(r"checkpoint_(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d{6})")


def _stamp(pattern: re.Pattern[str], text: str, fmt: str) -> float | None:
    match = pattern.search(text)
    return datetime.strptime(match.group(1), fmt).timestamp() if match else None  # local time, like Ray's


def phases(log: str, start: float, end: float) -> dict[str, float | None]:
    """Seconds from ``start`` (Ray accepted the job; for (a) the driver's spawn) to the driver's first line and
    to the first worker report, and from that report to ``end``."""
    driver = _stamp(_DRIVER_RE, log, "%Y-%m-%d %H:%M:%S,%f")
    report = _stamp(_REPORT_RE, log, "%Y-%m-%d_%H-%M-%S.%f")
    return {
        "to_driver_s": None if driver is None else driver - start,
        "to_report_s": None if report is None else report - start,
        "report_to_end_s": None if report is None else end - report,
        "manifest_to_end_s": None if manifest_at(log) is None else end - float(manifest_at(log) or 0),
    }


def manifest_at(log: str) -> float | None:
    """When the driver finished its result manifest (its ``finished_at``; the driver prints it right after)."""
    from airflow_ray_train_runtime.spec import MANIFEST_MARKER

    for line in log.splitlines():
        if line.startswith(MANIFEST_MARKER):
            with contextlib.suppress(ValueError):
                finished = json.loads(line[len(MANIFEST_MARKER) :]).get("finished_at")
                return float(finished) if finished is not None else None
    return None


def job_phases(head: Any, info: dict[str, Any]) -> dict[str, float | None]:
    """``phases`` of a Jobs API job, from its log and Ray's ``start_time``/``end_time``."""
    import httpx

    response = httpx.get(
        f"{head.dashboard_url}/api/jobs/{info['submission_id']}/logs",
        headers={"Authorization": f"Bearer {head.token}"},
        timeout=30,
    )
    response.raise_for_status()
    return phases(str(response.json().get("logs") or ""), info["start_time"] / 1000, info["end_time"] / 1000)


def run_peer(name: str) -> Any:
    """A peer provider's Ray job operator, same job, through ``dag.test()`` in the peer's own venv."""

    def run(bench: Bench) -> dict[str, Any]:
        import peers

        spec_arg = make_spec(name, bench.workspace.storage).to_arg()
        return dict(peers.run_peer(name, bench.head, bench.py_modules, spec_arg))

    return run


def run(bench: Bench) -> dict[str, list[dict[str, Any]]]:
    """Every mode once per round, rounds rotating the order; (c) at ``BENCH_BEFORE_SRC`` too when given."""
    import peers

    workers = {"c": OperatorWorker(bench)}
    if bench.settings.before_src:
        workers["c-before"] = OperatorWorker(bench, bench.settings.before_src)
    modes = {"a": run_direct, "b": run_cli, **{mode: run_operator(w) for mode, w in workers.items()}}
    for name in bench.settings.peers:
        if (peers.venv_of(name) / "bin" / "python").exists():
            modes[name] = run_peer(name)
        else:
            print(f"peer {name}: no venv at {peers.venv_of(name)} (bench/peers.py setup {name}); skipped", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        for rnd, order in rounds(bench.settings.warmup, bench.settings.runs, list(modes)):
            for mode in order:
                row = modes[mode](bench)
                row.update({"round": rnd, "load": loadavg()})
                print(f"round {rnd} {mode}: {json.dumps(row)}", flush=True)
                if rnd >= 0:
                    runs[mode].append(row)
    finally:
        for worker in workers.values():
            worker.stop()
    return runs


# -- report ---------------------------------------------------------------------------------------------------


def wall(runs: dict[str, list[dict[str, Any]]], mode: str) -> float:
    return med([r["wall_s"] for r in runs.get(mode, [])])


def targets(results: dict[str, Any]) -> list[str]:
    runs = results.get("overhead")
    if not runs:
        return []
    # "before": the operator at BENCH_BEFORE_REF in the same rounds, or an older run's own section.
    before, c_before = (runs, "c-before") if runs.get("c-before") else (results.get("overhead_before"), "c")

    def ratios(den: str) -> tuple[float, float | None]:
        now = words.ratio(wall(runs, "c"), wall(runs, den))
        return now, (words.ratio(wall(before, c_before), wall(before, den)) if before else None)

    latency = words.median_of(runs["c"], "latency_s")
    latency_was = words.median_of(before[c_before], "latency_s") if before else None
    return [
        words.target_line("(c)/(b)", *ratios("b"), TARGET_C_B),
        words.target_line("(c)/(a), operator / bare driver", *ratios("a"), TARGET_C_A),
        words.target_line("sync completion latency", latency, latency_was, TARGET_SYNC_LATENCY_S, fmt=".2f", unit=" s"),
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


PHASES = (
    ("submit_s", "caller start -> Ray accepts the job (`start_time`)"),
    ("to_driver_s", "-> the driver's first line (`ray.init`)"),
    ("to_report_s", "-> the first worker report"),
    ("report_to_end_s", "first report -> job end (`end_time`; (a): exit)"),
    ("manifest_to_end_s", "of which: the manifest printed -> job end"),
    ("latency_s", "job end -> the caller is done"),
)


def phase(runs: dict[str, list[dict[str, Any]]], mode: str, key: str) -> float:
    return words.median_of(runs.get(mode, []), key)


def startup_section(results: dict[str, Any]) -> list[str]:
    """Where the seconds before training go, per mode, from Ray's own time stamps."""
    runs = results.get("overhead")
    if not runs or not any(r.get("to_driver_s") is not None for r in runs.get("c", [])):
        return []
    modes = [m for m in ("a", "b", "c", "c-before") if runs.get(m)]
    lines = [
        "## The seconds before training starts (medians, s)",
        "",
        "From Ray's own time stamps: the job's `start_time` (Ray accepted it) and `end_time`; the driver's first "
        "line is `ray.init`'s first log line (Ray's logger stamps it); the first worker report is the time Ray "
        "Train names the first checkpoint's folder by. For (a) the clock starts when the driver is spawned. "
        "'caller start' is `ray job submit`'s spawn for (b) and `execute()`'s start for (c).",
        "",
        "| phase | " + " | ".join(SHORT.get(m, m) for m in modes) + " |",
        "|---|" + "---:|" * len(modes),
    ]
    for key, label in PHASES:
        cells = [phase(runs, m, key) for m in modes]
        lines.append(f"| {label} | " + " | ".join("" if v != v else f"{v:.2f}" for v in cells) + " |")
    lines.append("| wall (whole run) | " + " | ".join(f"{wall(runs, m):.2f}" for m in modes) + " |")
    a_driver, b_driver = phase(runs, "a", "to_driver_s"), phase(runs, "b", "to_driver_s")
    c_driver = phase(runs, "c", "to_driver_s")
    lines += [
        "",
        f"- Ray's: from accepting a job to its driver's first line takes {b_driver:.2f} s through `ray job submit` "
        f"and {c_driver:.2f} s through the operator, against {a_driver:.2f} s from spawning the bare driver; the "
        f"difference, {b_driver - a_driver:+.2f} s for (b) and {c_driver - a_driver:+.2f} s for (c), is what the "
        "Jobs API adds before the driver runs (its job supervisor actor: a new worker process with the job's "
        "runtime_env, then the driver as that actor's subprocess).",
        f"- Ours, before Ray has the job: {phase(runs, 'c', 'submit_s'):.2f} s from `execute()`'s start to Ray's "
        f"`start_time` (the job lookup for this try, the package checks, the cluster's resources, the submit), "
        f"against {phase(runs, 'b', 'submit_s'):.2f} s for `ray job submit` (its Python start and imports).",
        f"- After the first report (the rest of the training, the artifacts, Ray's shutdown): "
        f"{phase(runs, 'c', 'report_to_end_s'):.2f} s in (c), {phase(runs, 'b', 'report_to_end_s'):.2f} s in (b), "
        f"{phase(runs, 'a', 'report_to_end_s'):.2f} s in (a): the same driver and Train code.",
    ]
    if runs.get("c-before"):
        lines.append(
            f"- Before this change, (c): {phase(runs, 'c-before', 'submit_s'):.2f} s before Ray had the job, "
            f"{phase(runs, 'c-before', 'to_driver_s'):.2f} s to the driver's first line, job "
            f"{phase(runs, 'c-before', 'job_s'):.2f} s; after: {phase(runs, 'c', 'submit_s'):.2f}, "
            f"{c_driver:.2f}, {phase(runs, 'c', 'job_s'):.2f} s."
        )
    return [*lines, ""]


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
`python -m airflow_ray_train_runtime <spec>` entrypoint and `py_modules`, through `dag.test()` from their own
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
