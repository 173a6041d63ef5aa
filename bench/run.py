"""``make bench``: measure what the provider adds on top of Ray, and write ``bench/REPORT.md``, ``results.json``
and PNG plots.

Sections, each in its own module: ``shipping`` (always first: it uploads the code the others use), ``overhead``
(the same Train job as a bare driver, through ``ray job submit``, through ``RayTrainOperator`` and through
peers), ``deferrable`` (through a real scheduler and triggerer), ``scale`` (N deferred jobs in one triggerer),
``noticing`` (the same triggers without Airflow: how soon a job's end is seen, where the CPU goes meanwhile) and
``throughput`` (the Lightning example, runtime vs hand-written). Everything runs against a private Ray head
(own temp dir, ports and token) stopped by its process group at the end; Airflow gets a private home and
SQLite DB. The environment variables are read by ``harness.Settings``; ``--report-only`` rewrites the report
and plots from ``results.json``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import harness


def command(settings: harness.Settings) -> str:
    """The command line that reproduces this invocation."""
    line = (
        f"BENCH_SECTIONS={','.join(settings.sections)} BENCH_RUNS={settings.runs} BENCH_WARMUP={settings.warmup} "
        f"BENCH_SCALE={','.join(map(str, settings.scale_ns))} BENCH_SCALE_ROUNDS={settings.scale_rounds} "
        f"BENCH_SCALE_WINDOW={settings.scale_window_s:g} BENCH_SCALE_MAX_JOBS={settings.scale_max_jobs} bench/run.py"
    )
    if settings.before_src:
        line = f"BENCH_BEFORE_SRC={settings.before_src} {line}"
    return line


def stages() -> dict[str, Callable[[harness.Bench], dict[str, Any]]]:
    """Each section's run, returning the results.json keys it measured (``<section>_before`` with a before)."""
    import deferrable
    import noticing
    import overhead
    import scale
    import shipping
    import throughput

    return {
        "shipping": lambda bench: {"shipping": shipping.run(bench)},
        "overhead": lambda bench: {"overhead": overhead.run(bench)},
        "deferrable": lambda bench: {"deferrable": deferrable.run(bench)},
        "noticing": noticing.run,
        "noticing_niced": lambda bench: noticing.run(bench, niced=True),
        "scale": scale.run,
        "throughput": lambda bench: {"throughput": throughput.run(bench)},
    }


def measure(settings: harness.Settings, results: dict[str, Any], save: Callable[[], None]) -> None:
    """Run the sections ``settings`` asks for against a private head, saving the results after each. Shipping
    always runs first, on the fresh head: it uploads the packages the other sections use."""
    from airflow_ray_train.local_cluster import start_ray_head

    workspace = harness.prepare()
    results["machine"] = harness.machine()
    temp_dir = tempfile.mkdtemp(prefix="art_bray_")
    head = start_ray_head(temp_dir=temp_dir, token=secrets.token_hex(16), num_cpus=4)
    bench = harness.Bench(settings, workspace, head)
    try:
        harness.use_head(head)
        from airflow.utils import db

        db.resetdb()
        for name, stage in stages().items():
            if name not in settings.sections and name != "shipping":
                continue
            started: dict[str, Any] = {
                "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                "load_start": harness.loadavg(),
                "git": results["machine"]["git"],
            }
            started["beside_start"] = harness.beside(head)
            measured = stage(bench)
            if name == "shipping":
                bench.py_modules = measured["shipping"]["rows"][0]["py_modules"]
                if "shipping" not in settings.sections:
                    continue
            for stale in (name, f"{name}_before"):  # an earlier run's numbers must not sit beside these
                results.pop(stale, None)
                results["sections"].pop(stale, None)
            section = {**started, "command": command(settings), "load_end": harness.loadavg()}
            section["beside_end"] = harness.beside(head)
            for key, value in measured.items():
                results[key] = value
                results["sections"][key] = section
                print(f"{key}: {json.dumps(value, default=str)[:2000]}", flush=True)
            save()
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(workspace.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    settings = harness.Settings.from_environ()
    settings.out.mkdir(parents=True, exist_ok=True)
    results_file = settings.out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}
    results.setdefault("sections", {})

    def save() -> None:
        results_file.write_text(json.dumps(results, indent=1, default=str))

    if "--report-only" not in argv:
        measure(settings, results, save)
    import report

    report.plots(results, settings.out)
    (settings.out / "REPORT.md").write_text(report.report(results))
    print(f"wrote {settings.out / 'REPORT.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
