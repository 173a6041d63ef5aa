"""Resource arithmetic: what Ray Train asks for per worker, and whether a cluster can ever hold a job."""

from __future__ import annotations

from typing import Any


def worker_resources(scaling_config: dict[str, Any]) -> dict[str, float]:
    """What Ray Train asks for per worker, the way Ray 2.60's ``ScalingConfig`` derives it."""
    given = scaling_config.get("resources_per_worker")
    use_gpu = bool(scaling_config.get("use_gpu"))
    if given is None:
        if scaling_config.get("use_tpu"):
            bundle: dict[str, float] = {"TPU": 1.0}
        else:
            bundle = {"GPU": 1.0} if use_gpu else {"CPU": 1.0}
    else:
        bundle = {str(k): float(v) for k, v in given.items() if v}
    if use_gpu:
        bundle.setdefault("GPU", 1.0)
    if scaling_config.get("accelerator_type"):
        bundle.setdefault(f"accelerator_type:{scaling_config['accelerator_type']}", 0.001)
    return bundle


def _fits(bundle: dict[str, float], resources: dict[str, float]) -> int:
    """How many ``bundle``s one node with ``resources`` holds."""
    counts = [int(resources.get(key, 0.0) // amount + 1e-9) for key, amount in bundle.items() if amount > 0]
    return min(counts) if counts else 1_000_000


def _capacity(per_node: list[int], strategy: str) -> int:
    if strategy == "STRICT_PACK":
        return max(per_node, default=0)
    if strategy == "STRICT_SPREAD":
        return sum(1 for n in per_node if n > 0)
    return sum(per_node)


def _shown(amounts: dict[str, float]) -> dict[str, float | int]:
    """Amounts as a person reads them: whole numbers without ``.0``."""
    return {k: (int(v) if float(v).is_integer() else v) for k, v in amounts.items()}


def cluster_shortfall(
    nodes: list[dict[str, Any]],
    scaling_config: dict[str, Any],
    driver: dict[str, float] | None = None,
    workers: int | None = None,
) -> str | None:
    """Why the cluster can never run this job (a sentence naming the field and the fix), or None if it can.
    ``workers``: how many workers to check for (by default ``num_workers``; for an elastic ``[min, max]``, min).

    Counts total resources, not free ones: a busy cluster frees up, a small one never grows (on an
    autoscaling cluster, turn the check off)."""
    given = scaling_config.get("num_workers") or 1
    num_workers = workers if workers is not None else int(given[0] if isinstance(given, list) else given)
    bundle = worker_resources(scaling_config)
    strategy = scaling_config.get("placement_strategy") or "PACK"
    capacity = _capacity([_fits(bundle, node["resources"]) for node in nodes], strategy)
    totals: dict[str, float] = {}
    for node in nodes:
        for key, amount in node["resources"].items():
            if key in bundle or key in ("CPU", "GPU"):
                totals[key] = totals.get(key, 0.0) + float(amount)
    shown = _shown(dict(sorted(totals.items())))
    if capacity < num_workers:
        where = f" with placement_strategy={strategy}" if strategy.startswith("STRICT") else ""
        return (
            f"scaling_config asks for {num_workers} worker{'s' if num_workers != 1 else ''} x {_shown(bundle)}"
            f"{where}, but the cluster ({len(nodes)} node{'s' if len(nodes) != 1 else ''}, {shown} in total) can "
            f"never hold more than {capacity}. Fix: lower scaling_config.num_workers or resources_per_worker "
            "(use_gpu=False on a CPU-only cluster), or add nodes; on an autoscaling cluster pass "
            "check_cluster_resources=False."
        )
    if driver and not any(_fits(driver, node["resources"]) for node in nodes):
        return (
            f"the job driver asks for {driver} (entrypoint_num_cpus/_gpus/_memory/_resources), but no node of "
            f"the cluster ({shown} in total) has that much. Fix: lower or drop the entrypoint_* arguments."
        )
    return None
