"""What every benchmark section shares: the settings read from the environment, the private folders and Airflow
environment (set up by ``prepare``, never at import), the Train job the sections run, and small measurements.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SECTIONS = ("shipping", "overhead", "deferrable", "scale", "noticing", "noticing_niced", "throughput")

TRAIN_FUNC = "ray_train_examples.pytorch_classifier:train_func"
TRAIN_LOOP_CONFIG = {"train_size": 256, "epochs": 1, "batch_size": 64, "hidden": 16}
SCALING_CONFIG = {"num_workers": 2, "use_gpu": False}


@dataclass(frozen=True)
class Settings:
    """What a ``bench/run.py`` invocation measures, from its environment.

    ``BENCH_SECTIONS`` (comma-separated, default all), ``BENCH_RUNS`` (recorded rounds, 5), ``BENCH_WARMUP``
    (unrecorded rounds first, 1), ``BENCH_OUT`` (where REPORT.md, results.json and the plots go, ``bench/``),
    ``BENCH_PEERS`` (peer providers beside the overhead modes, ``astro,google``), ``BENCH_BEFORE_SRC`` (the
    provider's source at an earlier commit, ``make bench`` extracts ``BENCH_BEFORE_REF`` there: overhead, scale
    and noticing measure it beside this checkout, in the same rounds), ``BENCH_SCALE`` (numbers of deferred
    jobs, ``1,50,200``; noticing runs the same numbers of triggers), ``BENCH_SCALE_WINDOW`` (seconds each is
    watched, 60), ``BENCH_SCALE_ROUNDS`` (visits of each provider, 1), ``BENCH_PROFILE`` (the N whose triggerer
    py-spy samples, ``50,200``), ``BENCH_SCALE_MAX_JOBS`` (Ray jobs per scale or noticing run at most; more
    tasks or triggers share them; 0: one job per task; read by ``bench_dags.py``).
    """

    sections: tuple[str, ...] = SECTIONS
    runs: int = 5
    warmup: int = 1
    out: Path = BENCH
    peers: tuple[str, ...] = ("astro", "google")
    before_src: str = ""
    scale_ns: tuple[int, ...] = (1, 50, 200)
    scale_window_s: float = 60.0
    scale_rounds: int = 1
    profile_ns: tuple[int, ...] = (50, 200)
    scale_max_jobs: int = 0

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)

        def items(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(x for x in env[key].split(",") if x) if key in env else default

        sections = items("BENCH_SECTIONS", SECTIONS)
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise SystemExit(f"BENCH_SECTIONS: unknown {sorted(unknown)}; known: {','.join(SECTIONS)}")
        return cls(
            sections=sections,
            runs=int(env.get("BENCH_RUNS", cls.runs)),
            warmup=int(env.get("BENCH_WARMUP", cls.warmup)),
            out=Path(env.get("BENCH_OUT", str(BENCH))),
            peers=items("BENCH_PEERS", cls.peers),
            before_src=str(Path(env["BENCH_BEFORE_SRC"]).resolve()) if env.get("BENCH_BEFORE_SRC") else "",
            scale_ns=tuple(int(n) for n in items("BENCH_SCALE", tuple(map(str, cls.scale_ns)))),
            scale_window_s=float(env.get("BENCH_SCALE_WINDOW", cls.scale_window_s)),
            scale_rounds=int(env.get("BENCH_SCALE_ROUNDS", cls.scale_rounds)),
            profile_ns=tuple(int(n) for n in items("BENCH_PROFILE", tuple(map(str, cls.profile_ns)))),
            scale_max_jobs=int(env.get("BENCH_SCALE_MAX_JOBS") or 0),
        )


@dataclass(frozen=True)
class Workspace:
    """The invocation's private folders: Airflow's home and DB, the DAGs folder, the Train storage."""

    root: Path

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def dags(self) -> Path:
        return self.root / "dags"

    @property
    def storage(self) -> Path:
        return self.root / "ray_results"


def prepare(root: Path | None = None) -> Workspace:
    """Make the private folders, point this process's Airflow at them (home, SQLite DB, DAGs folder holding
    ``bench_dags.py`` and the examples), forget any Ray address or connection from the caller's environment,
    and make the DAGs, the bench modules and the shared ``airflow standalone`` helper importable."""
    workspace = Workspace(root or Path(tempfile.mkdtemp(prefix="art_bench_")))
    for folder in (workspace.airflow_home, workspace.dags, workspace.storage):
        folder.mkdir(parents=True, exist_ok=True)
    for link, target in (
        ("bench_dags.py", BENCH / "bench_dags.py"),
        ("ray_train_examples", REPO / "example_dags" / "ray_train_examples"),
    ):
        if not (workspace.dags / link).exists():
            (workspace.dags / link).symlink_to(target)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(workspace.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(workspace.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{workspace.airflow_home / 'airflow.db'}",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__RAY_TRAIN__DEFAULT_STORAGE_PATH": str(workspace.storage),
            "AIRFLOW_RAY_TRAIN_LOCAL_DIR": str(workspace.root / "embedded"),
        }
    )
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "AIRFLOW_CONN_RAY_TRAIN_DEFAULT"):
        os.environ.pop(key, None)
    importable(workspace)
    return workspace


def importable(workspace: Workspace) -> None:
    """The bench DAGs, the bench modules and the ``airflow standalone`` helper importable in this process."""
    for path in (workspace.dags, REPO / "tests", BENCH):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def use_head(head: Any) -> None:
    """Point ``ray_train_default`` (this process and the standalones it starts) at ``head``."""
    os.environ["AIRFLOW_CONN_RAY_TRAIN_DEFAULT"] = json.dumps(
        {"conn_type": "ray_train", "host": head.dashboard_url, "password": head.token}
    )


@dataclass
class Bench:
    """One invocation: its settings, folders, the private Ray head, and the ``py_modules`` shipping uploaded."""

    settings: Settings
    workspace: Workspace
    head: Any
    py_modules: list[str] = field(default_factory=list)


# -- measurements ---------------------------------------------------------------------------------------------


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` has them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def iso(value: str) -> float:
    """An ISO 8601 time from Airflow's API as a Unix time."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


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


def _label(proc: Any) -> str:
    """A process as ``user: program args`` (shortened): enough to tell what else ran on the machine."""
    words = [w.rsplit("/", 1)[-1] for w in proc.cmdline()[:4]] or [proc.name()]
    return f"{proc.username()}: {' '.join(' '.join(words).split())}"[:70]


def beside(head: Any | None = None, seconds: float = 2.0, top: int = 6) -> list[str]:
    """What else used the CPU for ``seconds``: the busiest processes that are neither this benchmark (its
    process tree) nor its Ray head, as ``% of one core  user: command``."""
    import psutil

    ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    if head is not None:
        with contextlib.suppress(psutil.Error):
            head_proc = psutil.Process(head.pid)
            ours |= {head.pid, *(p.pid for p in head_proc.children(recursive=True))}
    others = []
    for proc in psutil.process_iter():
        if proc.pid in ours:
            continue
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
            others.append(proc)
    time.sleep(seconds)
    busy: dict[str, float] = {}
    for proc in others:
        with contextlib.suppress(psutil.Error):
            pct = proc.cpu_percent(None)
            if pct >= 1.0:
                label = _label(proc)
                busy[label] = busy.get(label, 0.0) + pct
    return [f"{pct:.0f}% {label}" for label, pct in sorted(busy.items(), key=lambda kv: -kv[1])[:top]]


def make_spec(tag: str, storage: Path) -> Any:
    """The benchmark's Train job under a fresh name and submission id."""
    from airflow_ray_train_runtime.spec import TrainSpec

    name = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
    return TrainSpec(
        train_func=TRAIN_FUNC,
        run_name=name,
        submission_id=name,
        train_loop_config=dict(TRAIN_LOOP_CONFIG),
        scaling_config=dict(SCALING_CONFIG),
        run_config={"storage_path": str(storage)},
    )


def job_info(head: Any, job_id: str) -> dict[str, Any]:
    """A job's details straight from the head's Jobs API."""
    import httpx

    response = httpx.get(
        f"{head.dashboard_url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {head.token}"}, timeout=30
    )
    response.raise_for_status()
    return dict(response.json())


def rounds(warmup: int, runs: int, modes: list[str]) -> list[tuple[int, list[str]]]:
    """``warmup`` unrecorded rounds (negative numbers) then ``runs`` recorded ones, each running every mode
    once in an order rotated every round, so no mode always goes first."""
    return [(rnd, modes[rnd % len(modes) :] + modes[: rnd % len(modes)]) for rnd in range(-warmup, runs)]
