"""Which model the retraining examples serve (the champion), and how a better one takes its place.

With MLflow (the train task was tracked and registered a version: its XCom has ``model_version``), MLflow's
Model Registry decides: each version gets its held-out score as a tag (and its run as a metric), the
champion is the version under the alias ``champion``, and promoting moves the alias. Airflow speaks MLflow's
REST API for this (``MlflowHook``, the same server the train task used): no ``mlflow`` install next to Airflow.

Without MLflow, the folder registry of ``model_registry`` is the fallback, so the examples run anywhere.
"""

from __future__ import annotations

from typing import Any

CHAMPION_ALIAS = "champion"


def _hook() -> Any:
    from airflow_ray_train.hooks.mlflow import mlflow_hook

    hook = mlflow_hook()
    if hook is None:
        raise RuntimeError(
            "the train task registered a model version, but no MLflow is configured here ([ray_train] "
            "mlflow_conn_id or mlflow_tracking_uri): configure the same one for every task of the DAG"
        )
    return hook


def tracked(evaluation: dict[str, Any]) -> bool:
    """Whether the candidate is a version in MLflow's Model Registry (else the folder registry is used)."""
    return bool(evaluation.get("model_version"))


def record_score(model_name: str, evaluation: dict[str, Any], score: str) -> None:
    """Keep the candidate's held-out score with it: a tag on its model version and a metric of its run."""
    if not tracked(evaluation):
        return
    hook = _hook()
    hook.set_model_version_tag(model_name, evaluation["model_version"], score, str(evaluation[score]))
    hook.log_metrics(evaluation["mlflow_run_id"], {score: float(evaluation[score])})


def current_champion(model_name: str, evaluation: dict[str, Any], score: str) -> dict[str, Any] | None:
    """The model in service, ``{"version", "metrics": {score}}``, or None before the first promotion."""
    if not tracked(evaluation):
        from ray_train_examples.model_registry import champion, registry_root

        return champion(registry_root(), model_name)
    version = _hook().version_by_alias(model_name, CHAMPION_ALIAS)
    if version is None:
        return None
    tags = {tag["key"]: tag["value"] for tag in version.get("tags") or []}
    return {"version": version["version"], "metrics": {score: float(tags[score])}}


def beats_champion(score: float, current: dict[str, Any] | None, metric: str, higher_is_better: bool = True) -> bool:
    """A candidate replaces the champion only when strictly better on the same held-out metric."""
    if current is None:
        return True
    best = float(current["metrics"][metric])
    return score > best if higher_is_better else score < best


def promote(model_name: str, evaluation: dict[str, Any], source: str, run_id: str) -> dict[str, Any]:
    """Make the candidate the champion: move the alias to its version (MLflow), or copy ``source`` into a
    new version of the folder registry (fallback)."""
    if not tracked(evaluation):
        from ray_train_examples.model_registry import promote as promote_folder
        from ray_train_examples.model_registry import registry_root

        return promote_folder(registry_root(), model_name, source, evaluation, run_id)
    hook = _hook()
    hook.set_alias(model_name, CHAMPION_ALIAS, evaluation["model_version"])
    return {
        "model": model_name,
        "version": evaluation["model_version"],
        "alias": CHAMPION_ALIAS,
        "url": hook.settings.model_version_url(model_name, evaluation["model_version"]),
        "metrics": evaluation,
        "run_id": run_id,
    }
