"""The report's words and tables, computed from the numbers: whether a target is met, which of two is faster and
by how much, how a number moved. Nothing here knows a measured value in advance."""

from __future__ import annotations

import math
from typing import Any

from harness import med


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def target(value: float, limit: float, *, at_most: bool = True, strict: bool = False) -> str:
    """``met``/``NOT met`` for ``value`` against ``limit`` (``<=`` or ``>=``; ``<``/``>`` when ``strict``)."""
    if math.isnan(value):
        return "not measured"
    if at_most:
        return verdict(value < limit if strict else value <= limit)
    return verdict(value > limit if strict else value >= limit)


def target_line(label: str, value: float, was: float | None, limit: float, *, fmt: str = ".3f", unit: str = "") -> str:
    """``- label = value (before: was): target <= limit met`` for the 'at a glance' list."""
    before = f" (before: {was:{fmt}}{unit})" if was is not None else ""
    return f"- {label} = {value:{fmt}}{unit}{before}: target <= {limit:.2f}{unit} {target(value, limit)}"


def faster(name_a: str, a: float, name_b: str, b: float, unit: str = "s") -> str:
    """Which of two durations is shorter, and by how much: ``(c) is 9% faster than (b) (27.4 vs 30.3 s)``."""
    if math.isnan(a) or math.isnan(b):
        return f"{name_a} vs {name_b}: not measured"
    if abs(a - b) < 0.01 * max(a, b):
        return f"{name_a} and {name_b} take about the same time ({a:.2f} vs {b:.2f} {unit})"
    quick, quick_v, slow, slow_v = (name_a, a, name_b, b) if a < b else (name_b, b, name_a, a)
    return (
        f"{quick} is {100 * (slow_v - quick_v) / slow_v:.0f}% faster than {slow} ({quick_v:.2f} vs {slow_v:.2f} {unit})"
    )


def change(before: float, after: float, fmt: str = ".2f", unit: str = "") -> str:
    """How a number moved: ``17.3 -> 10.6 (-39%)``."""
    if math.isnan(before) or math.isnan(after):
        return "not measured"
    if before == 0:
        return f"{before:{fmt}}{unit} -> {after:{fmt}}{unit}"
    return f"{before:{fmt}}{unit} -> {after:{fmt}}{unit} ({100 * (after - before) / before:+.0f}%)"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def table(rows: list[tuple[str, list[float], str]]) -> list[str]:
    """One row per series: each run's value, the median and the target."""
    width = max(len(values) for _, values, _ in rows)
    out = [
        "| | " + " | ".join(f"run {i + 1}" for i in range(width)) + " | median | target |",
        "|---|" + "---:|" * (width + 1) + "---|",
    ]
    for label, values, goal in rows:
        pad = " | " * (width - len(values))
        cells = " | ".join(f"{v:.2f}" for v in values)
        out.append(f"| {label} | {cells}{pad} | {med(values):.2f} | {goal} |")
    return out


def ratio_table(
    runs: dict[str, list[dict[str, Any]]], pairs: list[tuple[str, str, str]], key: str = "wall_s"
) -> list[str]:
    """``(num)/(den)`` of ``key`` for each pair: of the medians, and the median of per-round ratios (which pairs
    runs that ran back to back)."""
    out = ["| ratio | of medians | median of per-round ratios | target |", "|---|---:|---:|---|"]
    for num, den, goal in pairs:
        if not (runs.get(num) and runs.get(den)):
            continue
        per_round = [n[key] / d[key] for n, d in zip(runs[num], runs[den], strict=False)]
        of_medians = ratio(med([r[key] for r in runs[num]]), med([r[key] for r in runs[den]]))
        out.append(f"| ({num})/({den}) | {of_medians:.3f} | {med(per_round):.3f} | {goal} |")
    return out


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return med([r[key] for r in runs if r.get(key) is not None])
