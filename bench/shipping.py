"""Shipping: ``RayTrainHook.build_runtime_env`` on a fresh head, first and repeated (package existence checks
and uploads of the runtime and ``ray_train_examples``). It runs first: it uploads what the other sections use."""

from __future__ import annotations

import time
from typing import Any

import words
from harness import TRAIN_FUNC, Bench


def run(bench: Bench) -> dict[str, Any]:
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


def repeat_bytes(shipping: dict[str, Any]) -> int:
    return max(r["bytes_uploaded"] for r in shipping["rows"][1:])


def targets(results: dict[str, Any]) -> list[str]:
    shipping = results.get("shipping")
    if not shipping:
        return []
    repeat = repeat_bytes(shipping)
    return [f"- a repeat submit uploads {repeat} bytes: target 0 {words.verdict(repeat == 0)}"]


def section(results: dict[str, Any]) -> list[str]:
    shipping = results.get("shipping")
    if not shipping:
        return []
    lines = [
        "## Shipping: `RayTrainHook.build_runtime_env` on a fresh head (runtime + `ray_train_examples`)",
        "",
        "| submit | bytes uploaded | seconds |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['attempt']} | {r['bytes_uploaded']} | {r['seconds']:.3f} |" for r in shipping["rows"]]
    repeat = repeat_bytes(shipping)
    lines += [
        "",
        f"py_modules: `{shipping['rows'][0]['py_modules']}`. Target: a repeat submit uploads 0 bytes: "
        f"{repeat} bytes, {words.verdict(repeat == 0)} (a repeat asks `GET /api/packages/gcs/<name>` per package "
        "and uploads only what the head lacks).",
        "",
    ]
    return lines
