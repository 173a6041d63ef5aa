"""The deployment id is made once: first uses that race (threads, processes, machines with no lock in common)
all go on with the same id, against a store with the task API's semantics (get, and a set that overwrites)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from airflow_ray_train import identity
from airflow_ray_train.identity import DEPLOYMENT_VARIABLE, deployment_id

RACERS = 4


class _SlowVariables:
    """Airflow Variables as the task API serves them: each call takes a while, and a set overwrites. Racer ``i``
    takes ``i * 0.15`` s longer to write, so the writes of racers that all read "none" land one after another."""

    def __init__(self, values: Any, racer: Any) -> None:
        self.values = values
        self.racer = racer
        self.sets = 0

    def get(self, key: str, default: Any = None) -> Any:
        time.sleep(0.05)
        return self.values.get(key, default)

    def set(self, key: str, value: Any, description: str | None = None) -> None:
        time.sleep(0.05 + 0.15 * self.racer())
        self.values[key] = value
        self.sets += 1


def _use(monkeypatch: pytest.MonkeyPatch, store: _SlowVariables) -> None:
    from airflow.sdk import Variable

    monkeypatch.delenv("AIRFLOW__RAY_TRAIN__DEPLOYMENT_ID", raising=False)
    monkeypatch.setattr(Variable, "get", staticmethod(store.get))
    monkeypatch.setattr(Variable, "set", staticmethod(store.set))


def _race(run: Any) -> list[str]:
    barrier = threading.Barrier(RACERS)

    def racer(index: int) -> str:
        barrier.wait()
        return run(index)

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(racer, range(RACERS)))


def test_first_uses_racing_on_one_machine_make_one_id(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setattr(identity, "DEPLOYMENT_ID_SETTLE_S", 0.0)  # the lock alone must do it here
    local = threading.local()
    store = _SlowVariables({}, lambda: local.index)

    def run(index: int) -> str:
        local.index = index
        return deployment_id()

    _use(monkeypatch, store)
    ids = _race(run)
    assert len(set(ids)) == 1 and ids[0] == store.values[DEPLOYMENT_VARIABLE]
    assert store.sets == 1  # the others waited, then read it
    assert deployment_id() == ids[0]


def test_first_uses_racing_on_machines_with_no_lock_in_common_go_on_with_the_same_id(monkeypatch, tmp_path):
    local = threading.local()
    store = _SlowVariables({}, lambda: local.index)
    homes = [tmp_path / f"machine{i}" for i in range(RACERS)]
    real_lock = identity._machine_lock

    def per_machine_lock():  # each racer is a machine of its own: AIRFLOW_HOME, and so the lock, differ
        monkeypatch.setenv("AIRFLOW_HOME", str(homes[local.index]))
        return real_lock()

    def run(index: int) -> str:
        local.index = index
        return deployment_id()

    monkeypatch.setattr(identity, "_machine_lock", per_machine_lock)
    _use(monkeypatch, store)
    ids = _race(run)
    assert store.sets == RACERS  # nobody could see the others' writes in time: each wrote its own
    assert set(ids) == {store.values[DEPLOYMENT_VARIABLE]}  # and each read back the last one


def _in_a_process(values: Any, home: str, results: Any, index: int, barrier: Any) -> None:
    import os

    from airflow.sdk import Variable

    os.environ["AIRFLOW_HOME"] = home
    os.environ.pop("AIRFLOW__RAY_TRAIN__DEPLOYMENT_ID", None)
    store = _SlowVariables(values, lambda: index)
    Variable.get = staticmethod(store.get)  # type: ignore[method-assign,assignment]
    Variable.set = staticmethod(store.set)  # type: ignore[method-assign,assignment]
    identity.DEPLOYMENT_ID_SETTLE_S = 0.0
    barrier.wait()
    results[index] = deployment_id()


def test_first_uses_racing_in_processes_of_one_machine_make_one_id(tmp_path):
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        values, results = manager.dict(), manager.dict()
        barrier = context.Barrier(RACERS)
        processes = [
            context.Process(target=_in_a_process, args=(values, str(tmp_path), results, i, barrier))
            for i in range(RACERS)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [process.exitcode for process in processes] == [0] * RACERS
        assert len(set(results.values())) == 1 and len(results) == RACERS
        assert results[0] == values[DEPLOYMENT_VARIABLE]


def test_an_airflow_home_where_no_lock_can_be_made_still_gets_an_id(monkeypatch, tmp_path):
    not_a_folder = tmp_path / "home"
    not_a_folder.write_text("")  # the lock's folder cannot be made here
    monkeypatch.setenv("AIRFLOW_HOME", str(not_a_folder))
    monkeypatch.setattr(identity, "DEPLOYMENT_ID_SETTLE_S", 0.0)
    store = _SlowVariables({}, lambda: 0)
    _use(monkeypatch, store)
    made = deployment_id()
    assert made == store.values[DEPLOYMENT_VARIABLE] and deployment_id() == made
