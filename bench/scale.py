"""Scale: N deferred jobs watched by one triggerer (``bench_scale_<N>`` in ``bench_dags.py``), in one ``airflow
standalone``: the triggerer's CPU and RSS, the requests Ray's dashboard served, the worker slots held, and how
soon each task ended after its job did."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import deferrable
import flame
import words
from harness import Bench, iso, loadavg, med, rounds

#: Targets: the triggerer's share of one core with N deferred jobs (idle baseline included), and how soon the
#: trigger notices a job ended.
TARGET_CORE_PCT = {50: 5.0, 200: 15.0}
TARGET_NOTICED_S = 2.0
SETTLE_S = 10.0
#: How long N tasks may take to defer (seconds per task, at least RAMP_MIN_S) before the N counts as stalled.
RAMP_S_PER_TASK = 3.0
RAMP_MIN_S = 600.0
#: Seconds of py-spy samples, after the measurement window (py-spy's own CPU stays out of the measurement).
PROFILE_S = 30.0


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


def dashboard_processes(head: Any) -> list[Any]:
    """The head's dashboard processes (the dashboard, its modules' subprocesses, the dashboard agent): they
    proxy each job's log stream and answer the status polls."""
    import psutil

    found = []
    for proc in process_tree(psutil.Process(head.pid)):
        try:
            if "dashboard" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


_STATUS_LOG_RE = re.compile(r"Ray job (\S+) is (SUCCEEDED|FAILED|STOPPED)")
_MAP_INDEX_RE = re.compile(r"map_index=(\d+)")


def trigger_noticed(airflow: Any, dag: str) -> dict[int, tuple[str, float]]:
    """When each task's trigger saw its job end, by map index: the job and the time of the trigger's "Ray job
    <id> is SUCCEEDED" record in the task's trigger log (it fires its event right after)."""
    noticed: dict[int, tuple[str, float]] = {}
    for path in (airflow.root / "home" / "logs").glob(f"dag_id={dag}/**/*trigger*"):
        index = _MAP_INDEX_RE.search(str(path))
        if index is None:
            continue
        for line in path.read_text(errors="replace").splitlines():
            if "Ray job" not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            match = _STATUS_LOG_RE.search(str(record.get("event", "")))
            if match and record.get("timestamp"):
                noticed[int(index.group(1))] = (match.group(1), iso(record["timestamp"]))
    return noticed


def memory_available_mib() -> float:
    import psutil

    return float(psutil.virtual_memory().available / 2**20)


def job_supervisors_mib(head: Any) -> tuple[int, float]:
    """How many Ray job supervisor processes the head runs, and their proportional memory (PSS) in MiB."""
    import psutil

    count, pss = 0, 0
    for proc in process_tree(psutil.Process(head.pid)):
        try:
            if proc.cmdline()[:1] == ["ray::JobSupervisor"]:  # Ray's process title
                count += 1
                pss += proc.memory_full_info().pss
        except psutil.Error:
            continue
    return count, pss / 2**20


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


def run_n(bench: Bench, airflow: Any, n: int, label: str, rnd: int) -> dict[str, Any]:
    """Trigger ``bench_scale_<n>`` (n mapped tasks, each a deferred waiting job); once all n are deferred and
    their jobs run, watch the triggerer for the window; then release the jobs and time the finish."""
    from airflow_standalone import wait_for
    from bench_dags import scale_job_prefix, scale_jobs

    from airflow_ray_train.hooks.ray_train import RayTrainHook

    dag = f"bench_scale_{n}"
    triggerer = airflow.component("triggerer")
    hook = RayTrainHook()
    # The release file of an earlier visit (the other provider's, same DAG) would end these jobs at once.
    (Path(os.environ["BENCH_RELEASE_DIR"]) / dag).unlink(missing_ok=True)
    ramp_started = time.time()
    run_id = airflow.trigger(dag)

    def all_deferred() -> bool:
        # Counts, not the task list: listing 200 task instances every second kept the API server busy.
        if airflow.count_task_instances(dag, run_id, ("failed", "upstream_failed")):
            failed = [ti["map_index"] for ti in airflow.task_instances(dag, run_id) if ti["state"] == "failed"]
            raise RuntimeError(f"{dag}: tasks {failed} failed before deferring; see {airflow.log_path}")
        return airflow.count_task_instances(dag, run_id, ("deferred",)) == n

    ramp_limit = max(RAMP_MIN_S, RAMP_S_PER_TASK * n)
    try:
        wait_for(f"{n} deferred tasks", all_deferred, ramp_limit, 3.0)
    except TimeoutError:
        # A provider that cannot get N tasks deferred (it stalls Ray's Jobs API) is a result, not a crash: say
        # how far it got, end the jobs, and go on.
        states = Counter(str(ti["state"]) for ti in airflow.task_instances(dag, run_id))
        (Path(os.environ["BENCH_RELEASE_DIR"]) / dag).touch()
        print(f"scale {label} N={n}: not all deferred after {ramp_limit:.0f} s: {dict(states)}", flush=True)
        return {"n": n, "stalled": True, "ramp_limit_s": ramp_limit, "states": dict(states), "load": loadavg()}
    prefix = scale_job_prefix(run_id)

    def running() -> list[dict[str, Any]]:
        return [j for j in hook.list_jobs() if j.submission_id.startswith(prefix) and j.status == "RUNNING"]

    # A job Ray has not started yet has no supervisor and prints nothing: not the steady state either.
    wait_for(f"the {scale_jobs(n)} Ray jobs to run", lambda: len(running()) == scale_jobs(n), 900, 1.0)
    time.sleep(SETTLE_S)  # the triggers' start-up (connection lookup, stream opening) is not the steady cost
    ours = running()
    ramp_s = time.time() - ramp_started
    supervisors, supervisors_mib = job_supervisors_mib(bench.head)

    def slots_held() -> int:
        return airflow.count_task_instances(dag, run_id, ("running", "queued"))

    dashboard = dashboard_processes(bench.head)
    dashboard_cpu0 = cpu_s(dashboard)
    # The window: CPU and RSS of the triggerer, and of Ray's dashboard (it serves the streams and the polls).
    watched = watch(triggerer, bench.settings.scale_window_s, slots_held)
    window = watched["until"] - watched["since"]
    dashboard_pct = 100 * (cpu_s(dashboard) - dashboard_cpu0) / window
    requests = dashboard_requests(bench.head, watched["since"], watched["until"])
    profile = None
    if n in bench.settings.profile_ns:
        raw = bench.settings.out / f"profile-{label}-{n}-round{rnd}.txt"
        if flame.record(triggerer.pid, PROFILE_S, raw):
            profile = flame.summarize(raw)
    (Path(os.environ["BENCH_RELEASE_DIR"]) / dag).touch()
    released = time.time()
    state = airflow.wait_run(dag, run_id, 900, interval=0.5)
    tis = airflow.task_instances(dag, run_id)
    jobs = {j.submission_id: j for j in hook.list_jobs() if j.metadata.get("bench") == "scale"}
    hook.close()
    noticed = trigger_noticed(airflow, dag)
    latencies, trigger_latencies = [], []
    for ti in tis:
        entry = airflow.xcom_response(dag, run_id, "wait", map_index=ti["map_index"])
        job = jobs.get(str(entry.json().get("value"))) if entry.status_code == 200 else None
        if job is not None and job.end_time and ti.get("end_date"):
            latencies.append(iso(ti["end_date"]) - job.end_time / 1000)
    for job_id, when in noticed.values():
        job = jobs.get(job_id)
        if job is not None and job.end_time:
            trigger_latencies.append(when - job.end_time / 1000)
    job_ends = [j.end_time / 1000 for j in jobs.values() if j.end_time and j.end_time / 1000 >= released]
    last_ti_end = max(iso(ti["end_date"]) for ti in tis if ti.get("end_date"))
    held = watched["samples"]
    return {
        "n": n,
        "jobs_running_at_start": len(ours),
        "job_supervisors": supervisors,
        "job_supervisors_pss_mib": supervisors_mib,
        "memory_available_mib": memory_available_mib(),
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
        "trigger_latency_s": sorted(trigger_latencies),
        "dashboard_core_pct": dashboard_pct,
        "profile": profile,
        "release_to_last_job_end_s": (max(job_ends) - released) if job_ends else None,
        "load": loadavg(),
    }


def visit(bench: Bench, label: str, provider_src: str, rnd: int) -> dict[str, Any]:
    """One ``airflow standalone`` with the provider at ``provider_src`` (this checkout when empty): its
    triggerer idle (no trigger) first, then each N in turn."""
    airflow = deferrable.standalone(
        bench, tuple(f"bench_scale_{n}" for n in bench.settings.scale_ns), provider_src=provider_src
    )
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
        print(f"scale {label} round {rnd} idle: {json.dumps(idle)}", flush=True)
        for n in bench.settings.scale_ns:
            row = run_n(bench, airflow, n, label, rnd)
            print(f"scale {label} round {rnd} N={n}: {json.dumps(row)}", flush=True)
            rows.append(row)
    finally:
        airflow.stop()
    return {"provider": provider_src or "this checkout", "round": rnd, "idle": idle, "rows": rows}


def run(bench: Bench) -> dict[str, Any]:
    """``BENCH_SCALE_ROUNDS`` rounds; with ``BENCH_BEFORE_SRC``, each round visits this checkout and the
    provider before, in an order that alternates (after, before, before, after...), so both see the same load."""
    release = bench.workspace.root / "release"
    release.mkdir(exist_ok=True)
    os.environ["BENCH_RELEASE_DIR"] = str(release)
    sources = {"after": "", "before": bench.settings.before_src} if bench.settings.before_src else {"after": ""}
    visits: dict[str, list[dict[str, Any]]] = {label: [] for label in sources}
    for rnd, order in rounds(0, bench.settings.scale_rounds, list(sources)):
        for label in order:
            visits[label].append(visit(bench, label, sources[label], rnd))
    keyed = {"after": "scale", "before": "scale_before"}
    return {keyed[label]: combine(found, bench.settings.scale_window_s) for label, found in visits.items()}


def combine(visits: list[dict[str, Any]], window_s: float) -> dict[str, Any]:
    """One provider's visits as one table: per N the median of each number over the rounds, the latencies of
    every round together, each round's profile; the visits themselves kept under ``visits``."""
    rows = []
    for index, first in enumerate(visits[0]["rows"]):
        same = [v["rows"][index] for v in visits if not v["rows"][index].get("stalled")]
        if not same:
            rows.append(dict(first))
            continue
        first = same[0]
        row = dict(first)
        for key, value in first.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "n":
                row[key] = med([r[key] for r in same if r.get(key) is not None])
        for key in ("completion_latency_s", "trigger_latency_s"):
            row[key] = sorted(x for r in same for x in r.get(key) or [])
        row["requests"] = {k: med([r["requests"].get(k, 0) for r in same]) for k in first["requests"]}
        row["profile"] = [r["profile"] for r in same if r.get("profile")]
        rows.append(row)
    idle = {k: med([v["idle"][k] for v in visits]) for k in visits[0]["idle"]}
    return {"provider": visits[0]["provider"], "window_s": window_s, "idle": idle, "rows": rows, "visits": visits}


# -- report ---------------------------------------------------------------------------------------------------


def measured(data: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rows of the N that ran their window (not those that stalled before all N deferred)."""
    return [r for r in (data or {}).get("rows", []) if not r.get("stalled")]


def stalled(data: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [r for r in (data or {}).get("rows", []) if r.get("stalled")]


def row_for(data: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
    return next((r for r in measured(data) if r["n"] == n), None)


def targets(results: dict[str, Any]) -> list[str]:
    scale, before = results.get("scale"), results.get("scale_before")
    if not scale:
        return []
    out = []
    for row in measured(scale):
        was = row_for(before, row["n"])
        limit = TARGET_CORE_PCT.get(row["n"])
        if limit is not None:
            moved = f" (before: {was['triggerer_core_pct']:.1f}%)" if was else ""
            out.append(
                f"- {row['n']} deferred jobs: triggerer {row['triggerer_core_pct']:.1f}% of one core{moved} (its "
                f"idle baseline {scale['idle']['triggerer_core_pct']:.1f}% included), RSS "
                f"{row['triggerer_rss_mib_max']:.0f} MiB: target < {limit:g}% "
                f"{words.target(row['triggerer_core_pct'], limit, strict=True)}; worker slots held "
                f"{row['worker_slots_held_max']}: target 0 {words.verdict(row['worker_slots_held_max'] == 0)}"
            )
        if was:
            ok = row["requests_per_job_minute"] <= was["requests_per_job_minute"]
            out.append(
                f"- {row['n']} deferred jobs: requests per job-minute "
                f"{words.change(was['requests_per_job_minute'], row['requests_per_job_minute'], '.1f')}: "
                f"target no higher than before {words.verdict(ok)}"
            )
        noticed = row.get("trigger_latency_s") or []
        if noticed:
            out.append(
                f"- {row['n']} deferred jobs: every job noticed within {max(noticed):.2f} s of its end (median "
                f"{med(noticed):.2f} s): target <= {TARGET_NOTICED_S:g} s "
                f"{words.target(max(noticed), TARGET_NOTICED_S)}"
            )
    for n, limit in TARGET_CORE_PCT.items():
        stuck = next((r for r in stalled(scale) if r["n"] == n), None)
        if stuck is not None:
            out.append(
                f"- {n} deferred jobs: stalled, {stuck['states'].get('deferred', 0)} of {n} tasks deferred after "
                f"{stuck['ramp_limit_s']:.0f} s: target < {limit:g}% NOT met"
            )
        elif row_for(scale, n) is None:
            out.append(
                f"- {n} deferred jobs: not measured in this run (`BENCH_SCALE`): target < {limit:g}% not checked"
            )
    return out


def _row_cells(label: str, r: dict[str, Any]) -> str:
    noticed = r.get("trigger_latency_s") or []
    dashboard = r.get("dashboard_core_pct")
    jobs = r.get("jobs_running_at_start", r["n"])
    shared = f" ({jobs:.0f} Ray jobs)" if jobs < r["n"] else ""
    return (
        f"| {label} | {r['n']}{shared} | {r['triggerer_core_pct']:.2f} | {r['cpu_s_per_job_minute']:.3f} | "
        f"{r['triggerer_rss_mib_max']:.0f} | {r['requests_per_job_minute']:.1f} | "
        + ("" if dashboard is None else f"{dashboard:.1f}")
        + f" | {r['worker_slots_held_max']} | "
        + (f"{med(noticed):.2f} / {max(noticed):.2f}" if noticed else "")
        + f" | {r['release_to_last_task_end_s']:.1f} |"
    )


def section(results: dict[str, Any]) -> list[str]:
    data = results.get("scale") or results.get("scale_before")
    if not data:
        return []
    window_s = data.get("window_s") or med([r["window_s"] for r in measured(data)])
    rounds_run = len(data.get("visits") or [data])
    lines = [
        "## Scale: N deferred jobs watched by one triggerer",
        "",
        "`bench_scale_<N>` (`bench/bench_dags.py`): N mapped tasks, each submits a job that only waits (it prints "
        "a line every 5 s until the benchmark creates its release file) and defers on the provider's "
        "`RayTrainJobTrigger` with `[ray_train] poll_interval`, as `RayTrainOperator(deferrable=True)` does. "
        f"Once all N are deferred and {SETTLE_S:.0f} s have passed, a {window_s:.0f} s window: the CPU time "
        "(user+system, psutil) of the `airflow triggerer` process and its children (the trigger runner), its RSS "
        "every 5 s, the task states every 5 s (running/queued = worker slots held), the CPU of Ray's dashboard "
        "processes (they proxy each job's log stream and answer the polls), and the requests the dashboard logged "
        "in its access log in the window (only the triggerer talks to Ray then). Then, for the profiled N, py-spy "
        f"samples the triggerer for {PROFILE_S:.0f} s. Then the jobs are released together; 'noticed' is the "
        "trigger's record that the job ended (its event follows at once) minus Ray's `end_time`. One `airflow "
        "standalone` (LocalExecutor, `[core] parallelism` 4) per provider and round, for all N; 'before' is the "
        "provider at `BENCH_BEFORE_REF` first on that standalone's PYTHONPATH, in the same invocation, the order of "
        f"the two alternating round by round ({rounds_run} round(s); numbers are medians over them).",
        "",
        "| provider | N | triggerer % of one core | CPU s per job-minute | RSS MiB (max) | requests per "
        "job-minute | Ray dashboard % of one core | worker slots held (max) | noticed after the job's end, "
        "median / max (s) | all N tasks done after release (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in (("before", "scale_before"), ("after", "scale")):
        data = results.get(key)
        if not data:
            continue
        idle = data["idle"]
        lines.append(
            f"| {label} | 0 (idle) | {idle['triggerer_core_pct']:.2f} | | {idle['triggerer_rss_mib']:.0f} | | | | | |"
        )
        lines += [_row_cells(label, r) for r in measured(data)]
        lines += [
            f"| {label} | {r['n']} | stalled: {r['states'].get('deferred', 0)} of {r['n']} deferred after "
            f"{r['ramp_limit_s']:.0f} s | | | | | | | |"
            for r in stalled(data)
        ]
    after, before = results.get("scale"), results.get("scale_before")
    if after and before:
        lines += [""]
        for r in measured(after):
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
    lines += memory_note(after or data)
    if after:
        lines += ["", "Completion latency per task when all N end at once (task `end_date` - job `end_time`, s):", ""]
        for r in measured(after):
            lat = r.get("completion_latency_s") or []
            if lat:
                lines.append(
                    f"- N={r['n']}: median {med(lat):.2f}, min {min(lat):.2f}, max {max(lat):.2f} (the resumed "
                    "tasks queue for the executor's 4 slots: each `execute_complete` is a new task process)"
                )
    lines += ["", "![scale](scale.png)", ""]
    return lines + profile_section(results)


def memory_note(data: dict[str, Any]) -> list[str]:
    """Why an N shares Ray jobs, from the memory its job supervisors took and the memory that was free."""
    shared = [r for r in measured(data) if r.get("jobs_running_at_start", r["n"]) < r["n"]]
    alone = [r for r in measured(data) if r.get("job_supervisors") and r.get("jobs_running_at_start", 0) == r["n"]]
    if not shared or not alone:
        return []
    per_job = max(r["job_supervisors_pss_mib"] / r["job_supervisors"] for r in alone)
    out = [""]
    for r in shared:
        need = per_job * r["n"] / 1024
        out.append(
            f"- N={r['n']} ran as {r['n']} deferred tasks and triggers watching {r['jobs_running_at_start']:.0f} "
            f"Ray jobs (task i watches job i mod {r['jobs_running_at_start']:.0f}; `BENCH_SCALE_MAX_JOBS`): each "
            f"Ray job has a supervisor process, {per_job:.0f} MiB each here (PSS, measured with one job per task), "
            f"so {r['n']} jobs would need {need:.1f} GiB for them alone, and this shared machine had "
            f"{r['memory_available_mib'] / 1024:.1f} GiB available while it ran. The triggerer's side is the same "
            "per trigger: each opens its own stream and polls its own job."
        )
    return out


def profile_section(results: dict[str, Any]) -> list[str]:
    """The flame graphs' widest frames, before and after, for each profiled N (the first round's)."""
    found = []
    for label, key in (("before", "scale_before"), ("after", "scale")):
        for row in measured(results.get(key)):
            profiles = row.get("profile") or []
            if isinstance(profiles, dict):
                profiles = [profiles]
            if profiles:
                found.append((row["n"], label, profiles[0]))
    if not found:
        return []
    lines = [
        "## Where the triggerer's CPU goes: py-spy",
        "",
        f"`py-spy record --subprocesses --threads --nonblocking --rate {flame.RATE_HZ}` on the `airflow triggerer` "
        "process for the profiled N, right after the measurement window. 'supervisor' is the triggerer's main "
        "process (Airflow's `TriggerRunnerSupervisor`: the database, the trigger runner's messages and log "
        "records), 'runner' its child running every trigger's `run()` on one asyncio loop. The raw samples are "
        "collapsed stacks (the flame graph's data: `flamegraph.pl` or speedscope.app draw them). On a loaded "
        "machine py-spy also counts threads that were runnable but waiting for a core (e.g. in `select`).",
        "",
    ]
    for n, label, summary in sorted(found, key=lambda x: (x[0], x[1] != "before")):
        lines += flame.lines(f"{label}, N={n}", summary)
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
        rows = measured(data)
        ns = [r["n"] for r in rows]
        left.plot(ns, [r["triggerer_core_pct"] for r in rows], marker="o", label=label)
        right.plot(ns, [r["requests_per_job_minute"] for r in rows], marker="o", label=label)
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
