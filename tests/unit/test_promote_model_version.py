"""PromoteModelVersionOperator's decision against an in-memory Model Registry behind the hook's HTTP client
(httpx.MockTransport: the hook's boundary). Higher or lower is better, a tie keeps the champion, a missing
champion or one without a value is beaten, an untracked training skips, bad input names the fix; and the race
protocol's rounds. Promotions racing on the real server are in tests/integration/test_mlflow_promotion.py."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from airflow_ray_train.compat import AirflowFailException
from airflow_ray_train.exceptions import RayTrainConfigError, RayTrainMlflowError
from airflow_ray_train.operators.mlflow import (
    CONTENDER_TAG_PREFIX,
    CONTENDER_WINDOW_S,
    MAX_ROUNDS,
    AirflowSkipException,
    PromoteModelVersionOperator,
)

MODEL = "digits"
TAG = f"{CONTENDER_TAG_PREFIX}champion"


#: What MLflow's SQL store answered in CI when two first promotions set a free alias at once.
RACED_INSERT = (
    "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.workspace, "
    "registered_model_aliases.name, registered_model_aliases.alias"
)


class Registry:
    """One registered model's versions (their tags) and aliases, answering MLflow's REST calls."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {}
        self.aliases: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        #: Alias sets refused as a racing insert is (another promotion created the alias first).
        self.refuse_sets = 0
        #: The most versions a page holds, whatever max_results asks (a server may answer with fewer).
        self.page_size = 1000

    def add(self, **tags: Any) -> str:
        version = str(len(self.tags) + 1)
        self.tags[version] = {key: str(value) for key, value in tags.items()}
        return version

    def _version(self, version: str) -> dict[str, Any]:
        aliases = [alias for alias, held in self.aliases.items() if held == version]
        tags = [{"key": key, "value": value} for key, value in self.tags[version].items()]
        return {"name": MODEL, "version": version, "tags": tags, "aliases": aliases}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        endpoint = request.url.path.removeprefix("/api/2.0/mlflow/")
        params = request.url.params
        body = json.loads(request.content) if request.content else {}
        self.calls.append((request.method, endpoint))
        if endpoint == "registered-models/get":
            aliases = [{"alias": alias, "version": version} for alias, version in self.aliases.items()]
            return httpx.Response(200, json={"registered_model": {"name": MODEL, "aliases": aliases}})
        if endpoint == "model-versions/get":
            if params["version"] not in self.tags:
                return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no version"})
            return httpx.Response(200, json={"model_version": self._version(params["version"])})
        if endpoint == "model-versions/search":
            assert params["filter"] == f"name='{MODEL}'" and params["order_by"] == "version_number ASC"
            start, size = int(params.get("page_token") or 0), min(int(params["max_results"]), self.page_size)
            page = [self._version(v) for v in sorted(self.tags, key=int)[start : start + size]]
            more = {"next_page_token": str(start + size)} if start + size < len(self.tags) else {}
            return httpx.Response(200, json={"model_versions": page, **more})
        if endpoint == "model-versions/set-tag":
            self.tags[body["version"]][body["key"]] = body["value"]
        elif endpoint == "model-versions/delete-tag":
            self.tags[body["version"]].pop(body["key"], None)
        elif endpoint == "registered-models/alias":
            if self.refuse_sets:
                self.refuse_sets -= 1
                return httpx.Response(400, json={"error_code": "BAD_REQUEST", "message": RACED_INSERT})
            self.aliases[body["alias"]] = body["version"]
        else:
            raise AssertionError(f"unexpected call {request.method} {endpoint}")
        return httpx.Response(200, json={})

    def sets(self) -> int:
        return self.calls.count(("POST", "registered-models/alias"))


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_STUB", json.dumps({"conn_type": "mlflow", "host": "http://mlflow.test"}))
    return Registry()


def promote(registry: Registry, version: Any, **kwargs: Any) -> PromoteModelVersionOperator:
    operator = PromoteModelVersionOperator(
        task_id="promote",
        model_name=MODEL,
        version=version,
        metric=kwargs.pop("metric", "acc"),
        mlflow_conn_id="mlflow_stub",
        **kwargs,
    )
    hook = operator.hook
    assert hook is not None
    hook.__dict__["client"] = httpx.Client(base_url=hook.settings.tracking_uri, transport=httpx.MockTransport(registry))
    return operator


def run(registry: Registry, version: Any, **kwargs: Any) -> dict[str, Any]:
    return promote(registry, version, **kwargs).execute({})  # type: ignore[arg-type]


def test_the_first_version_takes_a_free_alias_and_gets_its_value_as_a_tag(registry, capsys):
    version = registry.add()
    result = run(registry, version, metric_value=0.9)
    assert result == {
        "model": MODEL,
        "alias": "champion",
        "version": "1",
        "moved": True,
        "previous_version": None,
        "value": 0.9,
        "previous_value": None,
        "url": "http://mlflow.test/#/models/digits/versions/1",
    }
    assert registry.aliases == {"champion": "1"} and registry.tags["1"]["acc"] == "0.9"
    assert (
        "Moved alias 'champion' of model 'digits' to version 1 (acc 0.9): no version held it."
        in capsys.readouterr().out
    )
    # The winner keeps its contender mark until the window passes.
    mark = json.loads(registry.tags["1"][TAG])
    assert (mark["value"], mark["metric"], mark["higher_is_better"]) == (0.9, "acc", True)


@pytest.mark.parametrize(
    ("higher_is_better", "champion", "candidate", "moved"),
    [
        (True, 0.8, 0.9, True),
        (True, 0.9, 0.8, False),
        (False, 0.3, 0.2, True),
        (False, 0.2, 0.3, False),
        (True, 0.9, 0.9, False),  # a tie keeps the champion
        (False, 0.2, 0.2, False),
    ],
)
def test_the_alias_moves_only_to_a_strictly_better_value(registry, higher_is_better, champion, candidate, moved):
    registry.aliases["champion"] = registry.add(loss=champion)
    version = registry.add()
    result = run(registry, version, metric="loss", metric_value=candidate, higher_is_better=higher_is_better)
    assert result["moved"] is moved and (result["previous_version"], result["previous_value"]) == ("1", champion)
    assert registry.aliases["champion"] == (version if moved else "1")
    # A loser's mark goes at once (the champion beats it for good); a tie's stays until the window passes.
    assert (TAG in registry.tags[version]) is (moved or champion == candidate)


def test_values_come_from_the_tag_named_metric_then_metric_dot_metric(registry, capsys):
    registry.aliases["champion"] = registry.add(**{"metric.acc": 0.7})
    version = registry.add(acc=0.8, **{"metric.acc": 0.6})  # the held-out score wins over training's
    result = run(registry, version)
    assert result["moved"] and (result["value"], result["previous_value"]) == (0.8, 0.7)
    assert "it beats version 1's 0.7 (higher is better)" in capsys.readouterr().out
    loser = registry.add(**{"metric.acc": 0.75})
    assert not run(registry, loser)["moved"]
    assert "Kept alias 'champion' of model 'digits' on version 2 (acc 0.8): version 3 (acc 0.75) does not beat it" in (
        capsys.readouterr().out
    )


def test_a_champion_without_a_value_is_beaten_with_a_warning(registry, capsys):
    registry.aliases["champion"] = registry.add(other=1)
    version = registry.add()
    result = run(registry, version, metric_value="0.5")
    assert result["moved"] and result["previous_version"] == "1" and result["previous_value"] is None
    assert "version 1 holds alias 'champion' of model 'digits' but has no numeric tag 'acc'" in capsys.readouterr().out
    assert registry.aliases["champion"] == version


def test_a_version_already_holding_the_alias_stays_without_moving(registry, capsys):
    registry.aliases["champion"] = registry.add(acc=0.9)
    result = run(registry, "1")
    assert not result["moved"] and result["previous_version"] == "1" and registry.sets() == 0
    assert "Version 1 (acc 0.9) already holds alias 'champion' of model 'digits'." in capsys.readouterr().out


@pytest.mark.parametrize("version", [None, "", "  "])
def test_an_untracked_training_skips_with_the_reason(registry, version):
    with pytest.raises(AirflowSkipException, match=r"no model version to promote .*not registered in MLflow"):
        run(registry, version, metric_value=0.9)
    assert registry.calls == []


@pytest.mark.parametrize(
    ("kwargs", "tags", "message"),
    [
        ({"metric_value": "high"}, {}, r"metric_value='high' is not a number .* Fix: pass version 1's score for 'acc'"),
        ({"metric_value": float("nan")}, {}, r"metric_value=nan is not a number \(NaN is not comparable\)"),
        ({"metric_value": True}, {}, r"metric_value=True is not a number"),
        ({}, {"metric.loss": 0.1}, r"no value of 'acc' to compare: .* no tag 'acc' or 'metric.acc'\. Fix: pass"),
        ({}, {"acc": "n/a"}, r"has the tag 'acc' = 'n/a', which is not a number .* Fix: pass metric_value"),
    ],
)
def test_bad_input_fails_at_once_naming_the_field_and_the_fix(registry, kwargs, tags, message):
    version = registry.add(**tags)
    with pytest.raises(RayTrainConfigError, match=message) as raised:
        run(registry, version, **kwargs)
    assert raised.value.field == "metric_value" and isinstance(raised.value, AirflowFailException)
    assert registry.sets() == 0 and TAG not in registry.tags[version]


def test_a_version_without_mlflow_configured_or_a_wrong_direction_flag_is_refused(registry):
    operator = PromoteModelVersionOperator(task_id="p", model_name=MODEL, version="3", metric="acc", mlflow_conn_id="")
    with pytest.raises(RayTrainConfigError, match=r"no MLflow is configured for this task\. Fix: pass mlflow_conn_id"):
        operator.execute({})  # type: ignore[arg-type]
    with pytest.raises(RayTrainConfigError, match=r"higher_is_better='max' is not a boolean"):
        PromoteModelVersionOperator(task_id="q", model_name=MODEL, version="3", metric="acc", higher_is_better="max")  # type: ignore[arg-type]


def test_contender_marks_count_when_fresh_for_the_same_metric_and_direction_across_pages(registry):
    """A better contender marked by a promotion running at once takes the alias from this one's round; stale
    marks, marks for another metric or direction, and garbage are ignored; every page of versions is read."""
    registry.page_size = 2
    now = time.time()

    def mark(value: float, *, metric: str = "acc", higher: bool = True, age: float = 0.0) -> dict[str, str]:
        return {TAG: json.dumps({"value": value, "metric": metric, "higher_is_better": higher, "at": now - age})}

    registry.aliases["champion"] = registry.add(acc=0.5)
    registry.add(acc=0.99, **mark(0.99, age=CONTENDER_WINDOW_S + 60))  # a winner's old record
    registry.add(acc=0.98, **mark(0.98, metric="f1"))
    registry.add(acc=0.97, **mark(0.97, higher=False))
    registry.add(**{TAG: "not json"})
    racing = registry.add(acc=0.95, **mark(0.95))  # on the last page
    version = registry.add()
    result = run(registry, version, metric_value=0.9)
    assert registry.aliases["champion"] == racing and not result["moved"]
    assert TAG not in registry.tags[version]  # lost to a strictly better one: its mark is gone


def test_a_race_that_never_settles_gives_up_after_bounded_rounds_and_keeps_its_mark(registry, monkeypatch):
    version = registry.add()
    operator = promote(registry, version, metric_value=0.9)
    hook = operator.hook
    assert hook is not None
    # Another promotion moves the alias back right after each of this one's sets.
    monkeypatch.setattr(hook, "set_alias", lambda name, alias, version: registry.aliases.pop(alias, None))
    with pytest.raises(RayTrainMlflowError, match=rf"moved in each of {MAX_ROUNDS} rounds of promotion"):
        operator.execute({})  # type: ignore[arg-type]
    assert TAG in registry.tags[version]


def test_an_alias_set_refused_as_a_raced_insert_is_sent_again(registry):
    """Two first promotions set a free alias at once: the server's second insert breaks its unique key (HTTP
    400, seen in CI). The set is sent again, and now updates the alias the other promotion made."""
    version = registry.add()
    registry.refuse_sets = 1
    result = run(registry, version, metric_value=0.9)
    assert result["moved"] and registry.aliases == {"champion": version}
    assert registry.sets() == 2
    registry.refuse_sets = 5  # a server that keeps refusing: its reason reaches the task
    other = registry.add()
    with pytest.raises(RayTrainMlflowError, match="UNIQUE constraint failed"):
        run(registry, other, metric_value=0.95)
