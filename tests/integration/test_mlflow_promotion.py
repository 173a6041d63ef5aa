"""Promotions racing for one alias on the session's real MLflow server, without training: versions are made
with the hook's REST calls. Two promotions at once, and the worst interleaving forced (the worse one's first
set lands after the better one has finished), always end with the better version holding the alias."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest

from airflow_ray_train.hooks.mlflow import MlflowHook
from airflow_ray_train.operators.mlflow import CONTENDER_TAG_PREFIX, PromoteModelVersionOperator

pytestmark = [pytest.mark.integration]

TAG = f"{CONTENDER_TAG_PREFIX}champion"


def new_model(hook: MlflowHook, *values: float | None) -> tuple[str, list[str]]:
    """A registered model of its own with one version per value (tagged ``acc`` unless None)."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    hook.create_registered_model(name)
    versions = []
    for value in values:
        made = hook.call("POST", "model-versions/create", json={"name": name, "source": f"s3://models/{name}"})
        versions.append(str(made["model_version"]["version"]))
        if value is not None:
            hook.set_model_version_tag(name, versions[-1], "acc", str(value))
    return name, versions


def tags_of(hook: MlflowHook, name: str, version: str) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in hook.get_model_version(name, version).get("tags") or []}


def operator(name: str, version: str, value: float, higher_is_better: bool = True) -> PromoteModelVersionOperator:
    return PromoteModelVersionOperator(
        task_id=f"promote_{version}",
        model_name=name,
        version=version,
        metric="acc",
        metric_value=value,
        higher_is_better=higher_is_better,
    )


def run_at_once(*operators: PromoteModelVersionOperator) -> list[dict[str, Any]]:
    """Execute the operators in threads released together; returns their XComs in order."""
    start = threading.Barrier(len(operators))
    results: list[Any] = [None] * len(operators)

    def promote(index: int) -> None:
        start.wait()
        results[index] = operators[index].execute({})  # type: ignore[arg-type]

    threads = [threading.Thread(target=promote, args=(index,)) for index in range(len(operators))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(result is not None for result in results), results
    return results


def test_the_hook_reads_every_version_page_by_page_and_deletes_a_tag(mlflow_conn):
    hook = MlflowHook()
    name, versions = new_model(hook, 0.1, 0.2, 0.3, 0.4, 0.5)
    found = hook.search_model_versions(name, page_size=2)
    assert [v["version"] for v in found] == versions
    assert [{t["key"]: t["value"] for t in v["tags"]}["acc"] for v in found] == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    hook.delete_model_version_tag(name, versions[0], "acc")
    hook.delete_model_version_tag(name, versions[0], "acc")  # gone already: fine
    assert "acc" not in tags_of(hook, name, versions[0])


@pytest.mark.parametrize("higher_is_better", [True, False])
@pytest.mark.parametrize("champion", [None, "worst"])
def test_two_promotions_at_once_leave_the_better_version_holding_the_alias(mlflow_conn, champion, higher_is_better):
    hook = MlflowHook()
    worst, worse, better = (0.5, 0.7, 0.9) if higher_is_better else (0.9, 0.7, 0.5)
    for _ in range(3):
        name, (first, slow, fast) = new_model(hook, worst, None, None)
        if champion:
            hook.set_alias(name, "champion", first)
        worse_result, better_result = run_at_once(
            operator(name, slow, worse, higher_is_better), operator(name, fast, better, higher_is_better)
        )
        assert hook.version_by_alias(name, "champion")["version"] == fast
        assert better_result["moved"] and not worse_result["moved"]
        assert TAG in tags_of(hook, name, fast) and TAG not in tags_of(hook, name, slow)


@pytest.mark.parametrize("champion", [None, "worst"])
def test_the_worse_promotion_s_stale_set_after_the_better_one_finished_is_undone(mlflow_conn, monkeypatch, champion):
    """The worse promotion reads before the better one marks its version, decides to take the alias, and its
    set lands only after the better promotion has finished its loop: the alias sits on the worse version for a
    moment, then the worse promotion's next read sees the better mark and sets it back."""
    hook = MlflowHook()
    name, (first, slow, fast) = new_model(hook, 0.5, None, None)
    if champion:
        hook.set_alias(name, "champion", first)
    worse, better = operator(name, slow, 0.7), operator(name, fast, 0.9)
    worse_hook = worse.hook
    assert worse_hook is not None
    decided, better_done = threading.Event(), threading.Event()
    sets: list[tuple[str, str]] = []
    real_set_alias = worse_hook.set_alias

    def late_set_alias(model: str, alias: str, version: str) -> None:
        if not sets:
            decided.set()
            assert better_done.wait(120)
        real_set_alias(model, alias, version)
        sets.append((version, hook.version_by_alias(name, "champion")["version"]))

    monkeypatch.setattr(worse_hook, "set_alias", late_set_alias)
    results: dict[str, Any] = {}
    worse_thread = threading.Thread(target=lambda: results.update(worse=worse.execute({})))  # type: ignore[arg-type]
    worse_thread.start()
    assert decided.wait(60)
    results["better"] = better.execute({})  # type: ignore[arg-type]
    assert hook.version_by_alias(name, "champion")["version"] == fast
    better_done.set()
    worse_thread.join(timeout=120)

    assert sets == [(slow, slow), (fast, fast)]  # the stale set took the alias, the same promotion gave it back
    assert hook.version_by_alias(name, "champion")["version"] == fast
    assert results["better"]["moved"] and not results["worse"]["moved"]
    assert results["worse"]["previous_version"] == (first if champion else None)
    assert TAG in tags_of(hook, name, fast) and TAG not in tags_of(hook, name, slow)
    mark = json.loads(tags_of(hook, name, fast)[TAG])
    assert (mark["value"], mark["metric"], mark["higher_is_better"]) == (0.9, "acc", True)
    assert tags_of(hook, name, slow)["acc"] == "0.7"  # the value it was compared with stays on the version
