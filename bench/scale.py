"""Scale: N deferred jobs watched by one triggerer (``bench_scale_<N>`` in ``bench_dags.py``), in one ``airflow
standalone``: the triggerer's CPU and RSS, the requests Ray's dashboard served, the worker slots held, and how
soon each task ended after its job did."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import deferrable
import words
from harness import Bench, iso, loadavg, med

#: Targets: the triggerer's share of one core with 50 deferred jobs (idle baseline included), and worker slots.
TARGET_CORE_PCT = {50: 5.0}
SETTLE_S = 10.0


def process_tree(root: Any) -> list[Any]:
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_s(procs: list[Any]) -> float:
    """User + system CPU seconds of ``procs`` and their reaped children."""
    import psutil

    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def rss_mib(procs: list[Any]) -> float:
    import psutil

    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


_ACCESS_LOG_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*'(GET|POST|PUT) (\S+) HTTP[^']*'")


def dashboard_requests(head: Any, since: float, until: float) -> dict[str, int]:
    """Requests the dashboard served between two times, from its access log, by kind. In the scale window only
    the triggerer talks to Ray: every task is deferred and the benchmark makes no Ray call."""
    counts: dict[str, int] = {}
    log = Path(head.temp_dir) / "session_latest" / "logs" / "dashboard.log"
    for line in log.read_text(errors="replace").splitlines():
        match = _ACCESS_LOG_RE.match(line)
        if not match:
            continue
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, like the log
        if since <= when <= until:
            path = match.group(3)
            kind = "logs/tail" if path.endswith("/logs/tail") else "logs" if path.endswith("/logs") else "status"
            key = f"{match.group(2)} {kind}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def watch(triggerer: Any, window_s: float, sample: Any = None) -> dict[str, Any]:
    """The triggerer's CPU over ``window_s`` and its RSS every 5 s; ``sample()`` is called every 5 s too."""
    procs = process_tree(triggerer)
    cpu0, wall0, rss, samples = cpu_s(procs), time.time(), [rss_mib(procs)], []
    while time.time() - wall0 < window_s:
        time.sleep(min(5.0, max(0.0, window_s - (time.time() - wall0))))
        rss.append(rss_mib(process_tree(triggerer)))
        if sample is not None:
            samples.append(sample())
    wall1 = time.time()
    cpu = cpu_s(process_tree(triggerer)) - cpu0
    return {"since": wall0, "until": wall1, "cpu_s": cpu, "rss": rss, "samples": samples}


def run_n(bench: Bench, airflow: Any, n: int) -> dict[str, Any]:
    """Trigger ``bench_scale_<n>`` (n mapped tasks, each a deferred waiting job); once all n are deferred and
    their jobs run, watch the triggerer for the window; then release the jobs and time the finish."""
    from airflow_standalone import wait_for

    from airflow_ray_train.hooks.ray_train import RayTrainHook

    dag = f"bench_scale_{n}"
    triggerer = airflow.component("triggerer")
    hook = RayTrainHook()
    ramp_started = time.time()
    run_id = airflow.trigger(dag)

    def all_deferred() -> bool:
        tis = airflow.task_instances(dag, run_id)
        return len(tis) == n and all(ti["state"] == "deferred" for ti in tis)

    wait_for(f"{n} deferred tasks", all_deferred, 900, 1.0)
    time.sleep(SETTLE_S)  # the triggers' start-up (connection lookup, stream opening) is not the steady cost
    ours = [j for j in hook.list_jobs() if j["metadata"].get("bench") == "scale" and j["status"] == "RUNNING"]
    ramp_s = time.time() - ramp_started

    def slots_held() -> int:
        return sum(ti["state"] in ("running", "queued") for ti in airflow.task_instances(dag, run_id))

    watched = watch(triggerer, bench.settings.scale_window_s, slots_held)
    window = watched["until"] - watched["since"]
    requests = dashboard_requests(bench.head, watched["since"], watched["until"])
    (Path(os.environ["BENCH_RELEASE_DIR"]) / dag).touch()
    released = time.time()
    state = airflow.wait_run(dag, run_id, 900, interval=0.5)
    tis = airflow.task_instances(dag, run_id)
    jobs = {j["submission_id"]: j for j in hook.list_jobs() if j["metadata"].get("bench") == "scale"}
    hook.close()
    latencies = []
    for ti in tis:
        entry = airflow.xcom_response(dag, run_id, "wait", map_index=ti["map_index"])
        job = jobs.get(str(entry.json().get("value"))) if entry.status_code == 200 else None
        if job is not None and ti.get("end_date") and job.get("end_time"):
            latencies.append(iso(ti["end_date"]) - job["end_time"] / 1000)
    job_ends = [j["end_time"] / 1000 for j in jobs.values() if j["end_time"] and j["end_time"] / 1000 >= released]
    last_ti_end = max(iso(ti["end_date"]) for ti in tis if ti.get("end_date"))
    held = watched["samples"]
    return {
        "n": n,
        "jobs_running_at_start": len(ours),
        "ramp_s": ramp_s,
        "window_s": window,
        "triggerer_cpu_s": watched["cpu_s"],
        "triggerer_core_pct": 100 * watched["cpu_s"] / window,
        "cpu_s_per_job_minute": watched["cpu_s"] / (n * window / 60),
        "triggerer_rss_mib_max": max(watched["rss"]),
        "triggerer_rss_mib_start": watched["rss"][0],
        "requests": requests,
        "requests_per_job_minute": sum(requests.values()) / (n * window / 60),
        "worker_slots_held_max": max(held) if held else None,
        "state": state,
        "release_to_last_task_end_s": last_ti_end - released,
        "completion_latency_s": sorted(latencies),
        "release_to_last_job_end_s": (max(job_ends) - released) if job_ends else None,
        "load": loadavg(),
    }


def run(bench: Bench) -> dict[str, Any]:
    """The triggerer idle (no trigger) first, then each N in turn, in one ``airflow standalone``."""
    release = bench.workspace.root / "release"
    release.mkdir(exist_ok=True)
    os.environ["BENCH_RELEASE_DIR"] = str(release)
    airflow = deferrable.standalone(bench, tuple(f"bench_scale_{n}" for n in bench.settings.scale_ns))
    rows = []
    try:
        time.sleep(15)  # let standalone settle before the idle baseline
        triggerer = airflow.component("triggerer")
        watched = watch(triggerer, bench.settings.scale_window_s / 2)
        window = watched["until"] - watched["since"]
        idle = {
            "window_s": window,
            "triggerer_cpu_s": watched["cpu_s"],
            "triggerer_core_pct": 100 * watched["cpu_s"] / window,
            "triggerer_rss_mib": watched["rss"][-1],
        }
        print(f"scale idle: {json.dumps(idle)}", flush=True)
        for n in bench.settings.scale_ns:
            row = run_n(bench, airflow, n)
            print(f"scale {n}: {json.dumps(row)}", flush=True)
            rows.append(row)
    finally:
        airflow.stop()
    return {
        "provider": bench.settings.provider_src or "this checkout",
        "window_s": bench.settings.scale_window_s,
        "idle": idle,
        "rows": rows,
    }


# -- report ---------------------------------------------------------------------------------------------------


def row_for(data: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
    return next((r for r in (data or {}).get("rows", []) if r["n"] == n), None)


def targets(results: dict[str, Any]) -> list[str]:
    scale, before = results.get("scale"), results.get("scale_before")
    if not scale:
        return []
    out = []
    for row in scale["rows"]:
        limit = TARGET_CORE_PCT.get(row["n"])
        if limit is None:
            continue
        was = row_for(before, row["n"])
        moved = f" (before: {was['triggerer_core_pct']:.1f}%)" if was else ""
        out.append(
            f"- {row['n']} deferred jobs: triggerer {row['triggerer_core_pct']:.1f}% of one core{moved} (its idle "
            f"baseline {scale['idle']['triggerer_core_pct']:.1f}% included): target < {limit:g}% "
            f"{words.target(row['triggerer_core_pct'], limit, strict=True)}; worker slots held "
            f"{row['worker_slots_held_max']}: target 0 {words.verdict(row['worker_slots_held_max'] == 0)}"
        )
    return out


def section(results: dict[str, Any]) -> list[str]:
    data = results.get("scale") or results.get("scale_before")
    if not data:
        return []
    window_s = data.get("window_s") or med([r["window_s"] for r in data["rows"]])
    lines = [
        "## Scale: N deferred jobs watched by one triggerer",
        "",
        "`bench_scale_<N>` (`bench/bench_dags.py`): N mapped tasks, each submits a job that only waits (it prints "
        "a line every 5 s until the benchmark creates its release file) and defers on the provider's "
        "`RayTrainJobTrigger` with `[ray_train] poll_interval`, as `RayTrainOperator(deferrable=True)` does. "
        f"Once all N are deferred and {SETTLE_S:.0f} s have passed, a {window_s:.0f} s window: the CPU time "
        "(user+system, psutil) of the `airflow triggerer` process and its children (the trigger runner), its RSS "
        "every 5 s, the task states every 5 s (running/queued = worker slots held), and the requests Ray's "
        "dashboard logged in its access log in the window (only the triggerer talks to Ray then). Then the jobs are "
        "released together. One `airflow standalone` (LocalExecutor, `[core] parallelism` 4) for all N. "
        "'before' is the same harness with the provider at `BENCH_BEFORE_REF` first on the standalone's "
        "PYTHONPATH (`make bench` does this with `git archive`).",
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
    after, before = results.get("scale"), results.get("scale_before")
    if after and before:
        lines += [""]
        for r in after["rows"]:
            was = row_for(before, r["n"])
            if was:
                moved = [
                    f"{what} {words.change(was[key], r[key], fmt)}"
                    for what, key, fmt in (
                        ("triggerer % of one core", "triggerer_core_pct", ".2f"),
                        ("requests per job-minute", "requests_per_job_minute", ".1f"),
                        ("RSS MiB", "triggerer_rss_mib_max", ".0f"),
                    )
                ]
                lines.append(f"- N={r['n']}, before -> after: " + "; ".join(moved))
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


def plot(results: dict[str, Any], out: Path) -> list[str]:
    scale = [
        (label, results[key]) for label, key in (("before", "scale_before"), ("after", "scale")) if results.get(key)
    ]
    if not scale:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for label, data in scale:
        ns = [r["n"] for r in data["rows"]]
        left.plot(ns, [r["triggerer_core_pct"] for r in data["rows"]], marker="o", label=label)
        right.plot(ns, [r["requests_per_job_minute"] for r in data["rows"]], marker="o", label=label)
    for n, limit in TARGET_CORE_PCT.items():
        left.axhline(limit, color="red", linestyle="--", linewidth=0.8, label=f"target at N={n}: {limit:g}%")
    left.set_xlabel("deferred jobs")
    left.set_ylabel("triggerer CPU, % of one core")
    right.set_xlabel("deferred jobs")
    right.set_ylabel("HTTP requests per job-minute")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=100)
    plt.close(fig)
    return ["scale.png"]
