"""Where the triggerer's CPU goes: py-spy samples of the ``airflow triggerer`` process and its children (the
trigger runner), kept as collapsed stacks (the flame graph's data: ``flamegraph.pl`` or speedscope.app draw
it) and summed into the flame graph's widest frames for the report."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE_HZ = 50
#: Frames the report follows from before to after: Airflow's supervisor round (run once per wake-up), its
#: handling of the runner's log records, and this provider's trigger and its status poll.
FOCUS = (
    "TriggerRunnerSupervisor.load_triggers",
    "TriggerRunnerSupervisor.clean_unused",
    "TriggerRunnerSupervisor._process_log_messages_from_subprocess",
    "RayTrainJobTrigger.run",
    "AsyncRayTrainHook.get_job_info",
)
#: Frames in (nearly) all of a thread's samples: its call chain down to its main loop, not where time goes.
TRUNK_SHARE = 0.9
#: Leaf frames of a thread that waits rather than works.
WAITING_LEAVES = ("EpollSelector.select ", "_worker (concurrent/futures/thread.py", "Condition.wait ", "Event.wait ")


def py_spy() -> str | None:
    """The py-spy next to this interpreter (``make bench`` installs it), or on PATH; None without one."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path) -> bool:
    """Sample ``pid`` and its children for ``seconds`` into ``out`` (collapsed stacks, one ``frames count`` per
    line). Non-blocking: the triggerer is never paused. Returns whether it worked."""
    spy = py_spy()
    if spy is None:
        print("py-spy not found (pip install py-spy): no profile", flush=True)
        return False
    cmd = [spy, "record", "--pid", str(pid), "--subprocesses", "--threads", "--nonblocking", "--rate", str(RATE_HZ)]
    cmd += ["--duration", str(int(seconds)), "--format", "raw", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        print(f"py-spy failed ({proc.returncode}): {proc.stderr[-2000:]}", flush=True)
        return False
    return True


def _process_label(frame: str) -> str:
    # py-spy names each process as a root frame: process 123:"/venv/bin/python /venv/bin/airflow triggerer"
    cmd = frame.partition(":")[2].strip('"')
    return "serve-logs" if "serve-logs" in cmd else cmd.rsplit("/", 1)[-1]


def _waiting(role: str, code: list[str]) -> bool:
    """A sample of a thread that waits (py-spy's non-blocking mode also counts threads that were runnable but
    not running, which a busy machine has many of): the event loop's ``select``, an idle thread pool, and
    Airflow's log server, which idles through the whole window."""
    return role == "serve-logs" or not code or code[-1].startswith(WAITING_LEAVES)


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """The busy samples (waiting ones left out) by process (the supervisor is the root process, the trigger
    runner its child), each process's widest frames below its trunk, the hottest leaf frames, the share spent in
    this provider and in the ``FOCUS`` frames; percentages are of the busy samples."""
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    roles: dict[str, str] = {}
    for frames, _ in stacks:
        chain = [f for f in frames if f.startswith("process ")]
        for depth, frame in enumerate(chain):
            label = _process_label(frame)
            roles.setdefault(frame, "supervisor" if depth == 0 else label if label == "serve-logs" else "runner")
    busy: list[tuple[str, str, list[str], int]] = []
    waiting = 0
    for frames, n in stacks:
        chain = [f for f in frames if f.startswith("process ")]
        role = roles[chain[-1]] if chain else "?"
        code = [f for f in frames if not f.startswith(("process ", "thread "))]
        if _waiting(role, code):
            waiting += n
            continue
        thread = next((f for f in frames if f.startswith("thread ")), "") + (chain[-1] if chain else "")
        busy.append((role, thread, code, n))
    total = sum(n for *_, n in busy) or 1
    by_role: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    in_thread: dict[str, Counter[str]] = {}
    inclusive: dict[str, Counter[str]] = {}
    leaves: Counter[str] = Counter()
    for role, thread, code, n in busy:
        by_role[role] += n
        by_thread[thread] += n
        in_thread.setdefault(thread, Counter()).update({f: n for f in set(code)})
        inclusive.setdefault(role, Counter()).update({f: n for f in set(code)})
        leaves[f"{role}: {code[-1]}"] += n
    trunk = {f for t, counts in in_thread.items() for f, n in counts.items() if n >= TRUNK_SHARE * by_thread[t]}

    def share(test: Any) -> float:
        return 100 * sum(n for _, _, code, n in busy if any(test(f) for f in code)) / total

    return {
        "file": path.name,
        "samples": total,
        "waiting_samples": waiting,
        "rate_hz": RATE_HZ,
        "process_pct": {role: 100 * n / total for role, n in by_role.most_common()},
        "ours_pct": share(lambda f: "airflow_ray_train/" in f),
        "widest": {
            role: [[f, 100 * n / total] for f, n in counts.most_common() if f not in trunk][:top]
            for role, counts in inclusive.items()
        },
        "leaves": [[f, 100 * n / total] for f, n in leaves.most_common(top)],
        "focus": {name: share(lambda f, name=name: f.startswith(name + " ")) for name in FOCUS},
    }


def lines(label: str, summary: dict[str, Any]) -> list[str]:
    """The report's view of one profile: shares of all samples, per process, widest frames, hottest leaves."""
    shares = ", ".join(f"{role} {pct:.0f}%" for role, pct in summary["process_pct"].items())
    out = [
        f"**{label}** (`bench/{summary['file']}`, {summary['samples']} busy samples at {summary['rate_hz']} Hz; "
        f"{summary.get('waiting_samples', 0)} waiting ones left out): {shares}; frames of this provider "
        f"(`airflow_ray_train/`) in {summary['ours_pct']:.1f}% of the busy samples.",
        "",
        "| process | widest frames below its main loop | % of busy samples |",
        "|---|---|---:|",
    ]
    for role in ("supervisor", "runner"):
        for frame, pct in summary["widest"].get(role, [])[:8]:
            out.append(f"| {role} | `{frame}` | {pct:.1f} |")
    out += ["", "Hottest leaf frames (self time):", ""]
    out += [f"- `{frame}`: {pct:.1f}%" for frame, pct in summary["leaves"][:8]]
    return [*out, ""]
