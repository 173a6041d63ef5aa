"""Deferrable: (d) ``RayTrainOperator(deferrable=True)`` through a real scheduler and triggerer (``airflow
standalone``), triggered over REST, against (b) ``ray job submit`` in alternating rounds under the same load."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import overhead
import words
from harness import Bench, iso, job_info, loadavg, rounds

DAG_ID = "bench_overhead_deferrable"
TARGET_D_B = 1.10
TARGET_LATENCY_S = 2.0


def standalone(bench: Bench, dags: tuple[str, ...], provider_src: str = "") -> Any:
    """A started ``airflow standalone`` (a fresh one each time) reading the bench DAGs, with ``dags`` parsed
    and unpaused; the provider at ``provider_src`` first on its path (empty: this checkout's)."""
    from airflow_standalone import AirflowStandalone

    root = Path(tempfile.mkdtemp(prefix="standalone_", dir=bench.workspace.root))
    pythonpath = [provider_src] if provider_src else []
    airflow = AirflowStandalone(root, dags_folder=bench.workspace.dags, pythonpath=pythonpath)
    airflow.env.pop("BENCH_RECORD", None)
    airflow.start()
    try:
        for dag in dags:
            airflow.wait_parsed(dag)
            airflow.unpause(dag)
    except BaseException:
        airflow.fail()
        raise
    return airflow


def run_deferrable(bench: Bench, airflow: Any) -> dict[str, Any]:
    """(d): trigger the deferrable DAG over REST; done when the REST API reports the run's end (polled 4/s)."""
    started = time.perf_counter()
    run_id = airflow.trigger(DAG_ID)
    state = airflow.wait_run(DAG_ID, run_id, 900, interval=0.25)
    wall = time.perf_counter() - started
    if state != "success":
        raise RuntimeError(f"(d) run {run_id} ended {state}")
    ti = airflow.task_instance(DAG_ID, run_id, "train")
    info = job_info(bench.head, str(airflow.xcom(DAG_ID, run_id, "train", "job_id")))
    return {
        "wall_s": wall,
        "task_s": iso(ti["end_date"]) - iso(ti["start_date"]),
        "job_s": (info["end_time"] - info["start_time"]) / 1000,
        "latency_s": iso(ti["end_date"]) - info["end_time"] / 1000,
        "try_number": ti.get("try_number"),
    }


def run(bench: Bench) -> dict[str, list[dict[str, Any]]]:
    airflow = standalone(bench, (DAG_ID,))
    runs: dict[str, list[dict[str, Any]]] = {"b": [], "d": []}
    try:
        for rnd, order in rounds(bench.settings.warmup, bench.settings.runs, ["b", "d"]):
            for mode in order:
                row = overhead.run_cli(bench) if mode == "b" else run_deferrable(bench, airflow)
                row.update({"round": rnd, "load": loadavg()})
                print(f"deferrable round {rnd} {mode}: {json.dumps(row)}", flush=True)
                if rnd >= 0:
                    runs[mode].append(row)
    finally:
        airflow.stop()
    return runs


# -- report ---------------------------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[str]:
    runs, before = results.get("deferrable"), results.get("deferrable_before")
    if not runs:
        return []

    def d_b(r: dict[str, Any]) -> float:
        return words.ratio(words.median_of(r["d"], "wall_s"), words.median_of(r["b"], "wall_s"))

    def latency(r: dict[str, Any]) -> float:
        return words.median_of(r["d"], "latency_s")

    return [
        words.target_line("(d)/(b)", d_b(runs), d_b(before) if before else None, TARGET_D_B),
        words.target_line(
            "deferrable completion latency",
            latency(runs),
            latency(before) if before else None,
            TARGET_LATENCY_S,
            fmt=".2f",
            unit=" s",
        ),
    ]


def section(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, title in (("deferrable", "after"), ("deferrable_before", "before")):
        runs = results.get(key)
        if not runs:
            continue
        lines += [f"## Deferrable through the real triggerer, against (b) under the same load, {title}", ""]
        lines += words.table(
            [
                ("(b) ray job submit", [r["wall_s"] for r in runs["b"]], ""),
                ("(d) deferrable DAG run (POST -> run done)", [r["wall_s"] for r in runs["d"]], ""),
                ("(d) task start -> end", [r["task_s"] for r in runs["d"]], ""),
            ]
        )
        lines += ["", *words.ratio_table(runs, [("d", "b", f"<= {TARGET_D_B:.2f}")])]
        d, b = words.median_of(runs["d"], "wall_s"), words.median_of(runs["b"], "wall_s")
        lines += [
            "",
            f"By the medians: {words.faster('(d)', d, '(b)', b)}.",
            "",
            "Load average when each run ended: "
            + "; ".join(f"{m}: " + ", ".join(r["load"] for r in runs[m]) for m in ("b", "d")),
            "",
        ]
    return lines
