"""The learning curve of a run as a PNG: which reported numbers are curves, how they are grouped, the plot."""

from __future__ import annotations

import io
from typing import Any

#: Reported numbers that are bookkeeping, not a learning curve (Ray's, Lightning's and Trainer's).
_NOT_CURVES = {"epoch", "step", "start_epoch", "learning_rate", "grad_norm", "total_flos"}
_NOT_CURVE_SUFFIXES = ("_step", "_runtime", "_per_second", "_time", "_timestamp")
_SCORE_WORDS = ("acc", "f1", "auc", "precision", "recall", "score", "iou", "map", "bleu", "rouge")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_columns(reports: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for report in reports:
        for key, value in report["metrics"].items():
            if key not in columns and _is_number(value):
                columns.append(key)
    return columns


def learning_curve_panels(reports: list[dict[str, Any]]) -> tuple[str, list[tuple[str, list[str]]]]:
    """What the learning curve shows: the x axis (``epoch`` when every report has one, else the report
    number) and the panels (losses; scores such as accuracy; else the other metrics), each with its metrics."""
    columns = _numeric_columns(reports)
    has_epoch = bool(reports) and all(isinstance(r["metrics"].get("epoch"), (int, float)) for r in reports)
    x_axis = "epoch" if has_epoch else "report"
    plotted = [c for c in columns if c not in _NOT_CURVES and not c.endswith(_NOT_CURVE_SUFFIXES)]
    losses = [c for c in plotted if "loss" in c.lower()]
    scores = [c for c in plotted if c not in losses and any(word in c.lower() for word in _SCORE_WORDS)]
    panels = [(title, names) for title, names in (("loss", losses), ("score", scores)) if names]
    if not panels and plotted:
        panels = [("metrics", plotted[:8])]
    return x_axis, panels


def learning_curve_png(reports: list[dict[str, Any]], title: str) -> bytes | None:
    """The learning curve as a PNG, or None when there is nothing to plot or matplotlib is missing."""
    x_axis, panels = learning_curve_panels(reports)
    if not panels:
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print(
            "[airflow-ray-train] matplotlib is not installed on the cluster: no learning-curve plot "
            "(the metrics history CSV is written). Fix: pip install matplotlib",
            flush=True,
        )
        return None
    xs = [r["metrics"]["epoch"] if x_axis == "epoch" else i for i, r in enumerate(reports, 1)]
    figure = Figure(figsize=(5.5 * len(panels), 4), layout="tight")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, names) in zip(axes, panels, strict=True):
        for name in names:
            points = [(x, r["metrics"][name]) for x, r in zip(xs, reports, strict=True) if name in r["metrics"]]
            points = [(x, y) for x, y in points if _is_number(y)]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xlabel(x_axis)
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title, fontsize=10)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()
