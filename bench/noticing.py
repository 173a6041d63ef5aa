"""Noticing: how soon ``RayTrainJobTrigger`` sees a job end, with no Airflow around it, and where the machine's CPU
goes meanwhile. N triggers (task i watches job i mod J, J = ``BENCH_SCALE_MAX_JOBS`` or N) run on one asyncio
loop in a child process (the provider under test first on its ``PYTHONPATH``), against the bench's head; the J
waiting jobs are released all together, or one every ``STAGGER_S`` (jobs that end at different times).

The child (``python bench/noticing.py child '<json>'``) prints one JSON line; ``run`` drives it per provider, N
and release, in rounds that alternate the providers. The ``noticing_niced`` section runs the same with Ray's job
supervisors (and the jobs they run) at nice 19 from before the release: the head's control plane (GCS, dashboard,
its agent: what serves the triggers' polls and streams) then goes ahead of the 50-200 exiting supervisors, as it
would on a head with cores to spare, which separates what the trigger takes from what a saturated machine takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import words
from harness import BENCH, Bench, loadavg, med, rounds

#: Seconds between two jobs' releases in the staggered release.
STAGGER_S = 0.2
#: Seconds the triggers run before the release (their streams open; start-up is not what is measured).
SETTLE_S = 12.0
RELEASES = ("together", "staggered")
TARGET_S = 2.0


# -- the child: the triggers, the jobs, the clock ------------------------------------------------------------


def _snapshot(head_pid: int) -> dict[int, tuple[str, float]]:
    """The head's process tree by pid: (label, own CPU seconds)."""
    import psutil

    out = {}
    root = psutil.Process(head_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            try:
                cmd = proc.cmdline()
            except psutil.ZombieProcess:  # exited, not reaped yet: its CPU is still its own (label from before)
                cmd = ["(exited)"]
            label = cmd[0] if cmd and cmd[0].startswith("ray::") else Path(cmd[0]).name if cmd else "?"
            if cmd and label.startswith("python"):
                label = next((Path(c).name for c in cmd[1:] if c.endswith(".py")), label)
            out[proc.pid] = (label, t.user + t.system)
        except psutil.Error:
            continue
    return out


def _window_cpu(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds the head's processes still there at the end spent in the window, by label. A process that
    exited in the window is not here: the raylet reaps its workers without adding their time to its own
    children's, so what they spent shows only in the machine's busy time (``exited_cpu_s``)."""
    by: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        was = before.get(pid, (label, 0.0))
        by[was[0]] = by.get(was[0], 0.0) + seconds - was[1]
    return by


def _nice_supervisors(head_pid: int) -> int:
    """Put Ray's job supervisors and everything under them (the jobs' drivers) at nice 19; returns how many."""
    import psutil

    niced = 0
    for proc in psutil.Process(head_pid).children(recursive=True):
        try:
            if proc.cmdline()[:1] != ["ray::JobSupervisor"]:
                continue
            for member in [proc, *proc.children(recursive=True)]:
                member.nice(19)
                niced += 1
        except psutil.Error:
            continue
    return niced


def exited_cpu_s(row: dict[str, Any]) -> float:
    """The machine's busy CPU seconds in the window that no process still running at its end accounts for: the
    job supervisors that exited, with their drivers (the machine runs nothing else meanwhile)."""
    alive = sum(v for k, v in row["head_cpu_s"].items() if not k.startswith("exited"))
    return float(row["machine_busy_cpu_s"] - alive - row["triggers_cpu_s"])


def _own(proc: Any) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def child(args: dict[str, Any]) -> dict[str, Any]:
    import asyncio
    import shlex
    import threading

    import httpx
    import psutil

    from airflow_ray_train.hooks.ray_train import AsyncRayTrainHook, RayTrainHook
    from airflow_ray_train.triggers.ray_train import RayTrainJobTrigger
    from airflow_ray_train_runtime.spec import MANIFEST_MARKER

    n, jobs, release, stagger = args["n"], args["jobs"], Path(args["release_dir"]), args["stagger_s"]
    polls = {"status": 0}
    original = AsyncRayTrainHook.get_job_info

    async def counting(self: Any, job_id: str) -> Any:
        polls["status"] += 1
        return await original(self, job_id)

    AsyncRayTrainHook.get_job_info = counting  # type: ignore[method-assign]
    hook = RayTrainHook()
    ids = [f"{args['prefix']}-{i}" for i in range(jobs)]
    for i, job_id in enumerate(ids):
        flag = release / str(i)
        wait = (
            f"i=0; while [ ! -e {flag} ]; do sleep 0.5; i=$((i+1)); [ $((i % 10)) -eq 0 ] && echo waiting $i; "
            f"done; echo {shlex.quote(MANIFEST_MARKER + '{}')}; sleep 1"
        )
        hook.submit_job(entrypoint=f"sh -c {shlex.quote(wait)}", submission_id=job_id, metadata={"bench": "noticing"})
    deadline = time.time() + 600
    while sum(hook.get_job_info(j).status == "RUNNING" for j in ids) < jobs:
        if time.time() > deadline:
            raise TimeoutError("the waiting jobs did not all start")
        time.sleep(1)
    niced = _nice_supervisors(args["head_pid"]) if args.get("nice") else 0
    seen: dict[int, float] = {}
    statuses: set[str] = set()
    stop_probe = threading.Event()
    me = psutil.Process()

    def probe() -> float:
        """The dashboard's slowest answer to ``GET /api/version`` (no job lookup) in the window, every 0.1 s."""
        worst = 0.0
        with httpx.Client(base_url=args["dashboard_url"], headers={"Authorization": f"Bearer {args['token']}"}) as c:
            while not stop_probe.is_set():
                sent = time.monotonic()
                c.get("/api/version", timeout=60)
                worst = max(worst, time.monotonic() - sent)
                time.sleep(0.1)
        return worst

    def release_jobs() -> None:
        for i in range(jobs):
            (release / str(i)).touch()
            if stagger:
                time.sleep(stagger)

    async def watch(index: int) -> None:
        async for event in RayTrainJobTrigger(job_id=ids[index % jobs], poll_interval=args["poll_interval"]).run():
            seen[index] = time.time()
            statuses.add(str(event.payload["status"]))

    async def main() -> dict[str, Any]:
        tasks = [asyncio.create_task(watch(i)) for i in range(n)]
        await asyncio.sleep(SETTLE_S)
        polls["status"] = 0
        head0, sys0, me0 = _snapshot(args["head_pid"]), psutil.cpu_times(), _own(me)
        released = time.time()
        loop = asyncio.get_running_loop()
        probing = loop.run_in_executor(None, probe)
        threading.Thread(target=release_jobs, daemon=True).start()
        await asyncio.gather(*tasks)
        window = time.time() - released
        head1, sys1, me1 = _snapshot(args["head_pid"]), psutil.cpu_times(), _own(me)
        stop_probe.set()
        busy = sum(getattr(sys1, f) - getattr(sys0, f) for f in ("user", "system", "nice", "irq", "softirq"))
        by = _window_cpu(head0, head1)
        return {
            "window_s": window,
            "released": released,
            "machine_busy_cpu_s": busy,
            "triggers_cpu_s": me1 - me0,
            "head_cpu_s": {k: round(v, 3) for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.01},
            "dashboard_version_worst_s": await probing,
        }

    measured = asyncio.run(main())
    infos = {j: hook.get_job_info(j) for j in ids}
    hook.close()
    noticed = sorted(seen[i] - (infos[ids[i % jobs]].end_time or 0) / 1000 for i in range(n))
    ends = [(info.end_time or 0) / 1000 - measured["released"] for info in infos.values()]
    return {
        **measured,
        "n": n,
        "jobs": jobs,
        "release": args["release"],
        "noticed_s": noticed,
        "statuses": sorted(statuses),
        "status_polls_per_trigger": polls["status"] / n,
        "last_job_end_after_release_s": max(ends),
        "niced_processes": niced,
    }


# -- the parent: rounds, providers -----------------------------------------------------------------------------


def run_child(bench: Bench, provider_src: str, n: int, release: str, tag: str, nice: bool) -> dict[str, Any]:
    jobs = min(n, bench.settings.scale_max_jobs) if bench.settings.scale_max_jobs > 0 else n
    release_dir = Path(tempfile.mkdtemp(prefix="release_", dir=bench.workspace.root))
    args = {
        "n": n,
        "jobs": jobs,
        "release": release,
        "stagger_s": STAGGER_S if release == "staggered" else 0.0,
        "release_dir": str(release_dir),
        "prefix": f"bench-notice-{tag}",
        "head_pid": bench.head.pid,
        "dashboard_url": bench.head.dashboard_url,
        "token": bench.head.token,
        "poll_interval": 5.0,
        "nice": nice,
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (provider_src, env.get("PYTHONPATH", "")) if p)
    log = bench.workspace.root / f"noticing-{tag}.log"
    with log.open("w") as err:
        done = subprocess.run(
            [sys.executable, str(BENCH / "noticing.py"), "child", json.dumps(args)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=900,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"noticing child failed ({done.returncode}): see {log}\n{log.read_text()[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run(bench: Bench, niced: bool = False) -> dict[str, Any]:
    """Each provider, N and release, in rounds; ``niced``: Ray's job supervisors at nice 19 (``noticing_niced``)."""
    sources = {"after": "", "before": bench.settings.before_src} if bench.settings.before_src else {"after": ""}
    found: dict[str, list[dict[str, Any]]] = {label: [] for label in sources}
    for rnd, order in rounds(0, bench.settings.scale_rounds, list(sources)):
        for n in bench.settings.scale_ns:
            for release in RELEASES:
                for label in order:
                    tag = f"{label}-{n}-{release}-{rnd}{'-niced' if niced else ''}"
                    row = run_child(bench, sources[label], n, release, tag, niced)
                    row.update({"round": rnd, "load": loadavg()})
                    print(f"{tag}: {json.dumps(row)[:600]}", flush=True)
                    found[label].append(row)
    base = "noticing_niced" if niced else "noticing"
    keyed = {"after": base, "before": f"{base}_before"}
    return {
        keyed[label]: {"provider": sources[label] or "this checkout", "rows": rows} for label, rows in found.items()
    }


# -- report ---------------------------------------------------------------------------------------------------


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[int, str], list[dict[str, Any]]]:
    out: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault((row["n"], row["release"]), []).append(row)
    return out


def _noticed(rows: list[dict[str, Any]]) -> list[float]:
    """Every trigger's noticing time in ``rows``."""
    return [x for r in rows for x in r["noticed_s"]]


def _each(rows: list[dict[str, Any]]) -> list[tuple[int, str, list[dict[str, Any]], list[float]]]:
    """Per N and release, in order: the rows and every trigger's noticing time in them."""
    return [(n, release, group, _noticed(group)) for (n, release), group in sorted(_groups(rows).items())]


def _supervisors(row: dict[str, Any]) -> float:
    """CPU seconds of Ray's job supervisors in the window: those still running at its end, and what exited."""
    return float(sum(v for k, v in row["head_cpu_s"].items() if k == "ray::JobSupervisor") + exited_cpu_s(row))


def _other(row: dict[str, Any]) -> float:
    alive = sum(v for k, v in row["head_cpu_s"].items() if not k.startswith("exited"))
    return float(alive - sum(v for k, v in row["head_cpu_s"].items() if k == "ray::JobSupervisor"))


def targets(results: dict[str, Any]) -> list[str]:
    out = []
    for key, how in (("noticing", ""), ("noticing_niced", ", Ray's job supervisors at nice 19")):
        for n, release, rows, noticed in _each((results.get(key) or {}).get("rows", [])):
            out.append(
                f"- {n} triggers on {rows[0]['jobs']} jobs, no Airflow{how}, jobs ending {release}: noticed within "
                f"{max(noticed):.2f} s (median {med(noticed):.2f} s): target <= {TARGET_S:g} s "
                f"{words.target(max(noticed), TARGET_S)}"
            )
    return out


def _poll_luck(results: dict[str, Any]) -> list[str]:
    """Before vs after where the jobs end together: how many triggers saw the end from a status poll of their own
    (within 1 s of it) rather than from the stream."""
    before = _groups((results.get("noticing_before") or {}).get("rows", []))
    out, lucky = [], False
    for (n, release), rows in sorted(_groups(results["noticing"]["rows"]).items()):
        if release != "together" or n < 2 or (n, release) not in before:
            continue
        parts, early = [], {}
        for label, group in (("before", before[(n, release)]), ("after", rows)):
            noticed = _noticed(group)
            late = [x for x in noticed if x >= 1.0]
            early[label] = len(noticed) - len(late)
            parts.append(
                f"{label} {early[label]} of {len(noticed)} within 1 s, the rest at a median of "
                f"{med(late) if late else 0.0:.2f} s"
            )
        lucky = lucky or early["before"] > early["after"]
        out.append(f"- N={n} on {rows[0]['jobs']} jobs, ending together: {'; '.join(parts)}.")
    if lucky:
        out.append(
            "- Why before saw more ends within 1 s: each trigger also polled the status every `poll_interval` (5 s) "
            "while its stream was open, each at a phase of its own, and a poll that fell between the job's end and "
            "its manifest's arrival noticed the end at once. After, that backstop is 30 s apart (12.0 -> 2.0 "
            "requests per job-minute, the scale section), so the end comes from the stream, in Ray's 2 s steps, "
            "later still while the exiting supervisors hold the machine. A backstop every 5 s would buy back those "
            "early notices at 6x the requests; the 2 s target under this load would take a poll about every second."
        )
    return [*out, ""] if out else []


TABLE_HEAD = [
    "| provider | N (J jobs) | release | noticed median / max (s) | status polls per trigger | window (s) | "
    "machine busy CPU s | Ray job supervisors CPU s | other head processes CPU s | triggers CPU s | "
    "dashboard's slowest answer (s) |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def _table_rows(results: dict[str, Any], base: str) -> list[str]:
    lines = []
    for label, key in (("before", f"{base}_before"), ("after", base)):
        for n, release, rows, noticed in _each((results.get(key) or {}).get("rows", [])):
            lines.append(
                f"| {label} | {n} ({rows[0]['jobs']}) | {release} | {med(noticed):.2f} / {max(noticed):.2f} | "
                f"{med([r['status_polls_per_trigger'] for r in rows]):.1f} | "
                f"{med([r['window_s'] for r in rows]):.1f} | "
                f"{med([r['machine_busy_cpu_s'] for r in rows]):.1f} | {med([_supervisors(r) for r in rows]):.1f} | "
                f"{med([_other(r) for r in rows]):.1f} | {med([r['triggers_cpu_s'] for r in rows]):.2f} | "
                f"{med([r['dashboard_version_worst_s'] for r in rows]):.2f} |"
            )
    return lines


def _niced(results: dict[str, Any]) -> list[str]:
    """The same triggers with Ray's job supervisors at nice 19: the head's control plane ahead of them."""
    data = results.get("noticing_niced")
    if not data:
        return []
    lines = [
        "### The same, with Ray's job supervisors at nice 19",
        "",
        "Section `noticing_niced`: the same runs, but before the triggers start, every `ray::JobSupervisor` and "
        "everything under it (the job's driver, its `sleep`s) is put at nice 19. The head's GCS, dashboard and "
        "dashboard agent (what answers the status polls and serves the log streams), and the triggers, then run "
        "ahead of the exiting supervisors, as they would where the head has cores to spare. Most of the "
        "supervisors' exit then waits until the triggers had their events, which the window's busy CPU seconds "
        "show. Rows from one invocation, the provider before measured beside this checkout. At N=200, 150 "
        "triggers hold no log stream (`[ray_train] max_log_streams`, 50 per cluster): they see the end from their "
        "status polls, every `poll_interval` (5 s), which sets the maximum there.",
        "",
        *TABLE_HEAD,
        *_table_rows(results, "noticing_niced"),
        "",
    ]
    plain = {(n, release): noticed for n, release, _, noticed in _each((results.get("noticing") or {}).get("rows", []))}
    for n, release, rows, noticed in _each(data["rows"]):
        if (n, release) in plain:
            before = plain[(n, release)]
            lines.append(
                f"- N={n} on {rows[0]['jobs']} jobs, {release}: after, median {med(before):.2f} s with the "
                f"supervisors at the normal priority, {med(noticed):.2f} s with them niced; max "
                f"{max(before):.2f} -> {max(noticed):.2f} s."
            )
    return [*lines, ""]


def section(results: dict[str, Any]) -> list[str]:
    if not results.get("noticing"):
        return []
    cores = os.cpu_count()
    lines = [
        "## Noticing a job's end: the trigger alone, and what the machine does meanwhile",
        "",
        "`bench/noticing.py`: N `RayTrainJobTrigger`s on one asyncio loop in a child process (no Airflow: the "
        "provider under test first on its `PYTHONPATH`), against this run's head; trigger i watches job i mod J. "
        "The J jobs wait like the scale section's (an `sh` loop; released, each prints the manifest line and exits "
        f"a second later). After {SETTLE_S:.0f} s the jobs are released all together, or one every {STAGGER_S} s "
        "(staggered). 'Noticed' is when the trigger's event came minus Ray's `end_time`. In the window from the "
        "release to the last event: the machine's busy CPU seconds (`/proc/stat`; it holds "
        f"{cores} CPU seconds per second), the CPU seconds of Ray's job supervisors (those still running at the "
        "window's end, plus the busy time no running process accounts for: the supervisors that exited, with "
        "their drivers; the raylet reaps its workers without adding their time to its own), of the head's other "
        "processes, and of the triggers themselves; the status polls each trigger sent; and the slowest answer of "
        "the dashboard to `GET /api/version` (no job lookup), polled every 0.1 s.",
        "",
        *TABLE_HEAD,
    ]
    lines += _table_rows(results, "noticing")
    lines += [
        "",
        "How the end is seen, and what is Ray's: the trigger reads the job's log stream and sends a status poll "
        "at once when the manifest line (the driver's last) or the stream's close arrives, then every 0.2 s. "
        "Ray's dashboard agent serves the stream from the log file in steps (`ray/dashboard/modules/job/utils.py`, "
        "`job_manager.py`): `file_tail_iterator` hands on the lines it read only after the 1 s sleep it takes at "
        "the file's end, and where that read found nothing new, `JobManager.tail_job_logs` checks the job's "
        "status and sleeps `LOG_TAIL_SLEEP_S` (1 s) before the next read. A line printed by a quiet job reaches "
        "the stream 1 to 3 s after it was printed (2 s on average), and the stream closes only once a status check "
        "found the job ended. Where the manifest arrives before the job ends, the 0.2 s polls notice the end "
        "within a poll; where it arrives after, the end is noticed when the line arrives: 'status polls per "
        "trigger' near 1 says the first poll already found the job ended. These jobs exit 1 s after printing the "
        "manifest (the runtime's driver 1.8-1.9 s after, see the start-up table), so even on an idle head their "
        "manifest arrives up to 2 s after the end: about 2 s is the floor of the worst case for any watcher that "
        "learns of the end from Ray's stream, and only a status poll about every second per job gets under it.",
        "",
        *_poll_luck(results),
    ]
    for (n, release), rows in sorted(_groups(results["noticing"]["rows"]).items()):
        slowest = med([r["dashboard_version_worst_s"] for r in rows])
        if slowest > TARGET_S:
            lines.append(
                f"- N={n} on {rows[0]['jobs']} jobs, {release}: Ray's dashboard left `GET /api/version` unanswered "
                f"for up to {slowest:.1f} s while the jobs ended, with the machine busy "
                f"{med([r['machine_busy_cpu_s'] for r in rows]):.1f} of "
                f"{(cores or 1) * med([r['window_s'] for r in rows]):.1f} CPU seconds and the triggers at "
                f"{med([r['triggers_cpu_s'] for r in rows]):.2f}: the trigger's polls and stream wait on Ray there."
            )
    return [*lines, "", *_niced(results)]


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        print(json.dumps(child(json.loads(sys.argv[2]))), flush=True)
    else:
        raise SystemExit("usage: noticing.py child '<json>' (make bench runs it: BENCH_SECTIONS=noticing)")
