"""The graceful stop's Airflow side: the grace period from the operator or ``[ray_train] stop_grace_period``, the
job supervisor's wait it becomes in the job's runtime_env, and how long a stop is then waited for."""

from __future__ import annotations

from datetime import timedelta

import pytest

from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train.hooks.jobs_api import STOP_TIMEOUT_S, JobInfo
from airflow_ray_train.identity import TryIdentity
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.runtime_env import with_stop_wait
from airflow_ray_train_runtime.spec import SpecError, TrainSpec
from airflow_ray_train_runtime.stop import STOP_WAIT_ENV, WRAP_UP_S, stop_wait_s


def operator(**kwargs):
    return RayTrainOperator(task_id="t", train_func="pkg.mod:train_func", **kwargs)


def test_the_grace_period_comes_from_the_task_else_the_setting(monkeypatch):
    assert operator().stop_grace_period_s() == 60.0
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__STOP_GRACE_PERIOD", "5")
    assert operator().stop_grace_period_s() == 5.0
    assert operator(stop_grace_period=0).stop_grace_period_s() == 0.0
    assert operator(stop_grace_period=timedelta(minutes=2)).stop_grace_period_s() == 120.0


@pytest.mark.parametrize("bad", ["soon", True, [30]])
def test_a_grace_period_that_is_not_seconds_is_refused_naming_the_field(bad):
    with pytest.raises(RayTrainConfigError, match=r"stop_grace_period is .* Fix: give seconds") as info:
        operator(stop_grace_period=bad).stop_grace_period_s()
    assert info.value.field == "stop_grace_period"


@pytest.mark.parametrize("bad", [-1, 86401, "30"])
def test_the_spec_refuses_a_grace_period_out_of_range(bad):
    with pytest.raises(SpecError, match="stop_grace_period_s"):
        TrainSpec(train_func="pkg.mod:f", run_name="r", submission_id="s", stop_grace_period_s=bad)


def test_the_supervisor_waits_the_grace_period_and_the_wrap_up_before_sigkill():
    env = with_stop_wait({"pip": ["x"], "env_vars": {"A": "1"}}, 30.5)
    assert env == {"pip": ["x"], "env_vars": {"A": "1", STOP_WAIT_ENV: str(31 + WRAP_UP_S)}}
    assert stop_wait_s(60) == 60 + WRAP_UP_S
    # No grace period: Ray's own 3 s; a longer wait the user set is kept.
    assert with_stop_wait({"env_vars": {"A": "1"}}, 0) == {"env_vars": {"A": "1"}}
    assert with_stop_wait({"env_vars": {STOP_WAIT_ENV: "600"}}, 30)["env_vars"][STOP_WAIT_ENV] == "600"


def test_a_stop_is_waited_for_as_long_as_the_job_itself_waits():
    assert JobInfo("j", "RUNNING").stop_timeout_s == STOP_TIMEOUT_S
    graceful = JobInfo("j", "RUNNING", runtime_env={"env_vars": {STOP_WAIT_ENV: "75"}})
    assert graceful.stop_timeout_s == STOP_TIMEOUT_S + 75
    assert JobInfo("j", "RUNNING", runtime_env={"env_vars": {STOP_WAIT_ENV: "x"}}).stop_timeout_s == STOP_TIMEOUT_S


def test_a_cleared_task_looks_back_through_the_tries_before_its_series():
    identity = TryIdentity("d", "dag", "run", "inst", "task", -1, try_number=4, first_try_number=4)
    assert [i.rsplit("-", 1)[1] for i in identity.previous_series_ids()] == ["try3", "try2", "try1"]
    first = TryIdentity("d", "dag", "run", "inst", "task", -1, try_number=1, first_try_number=1)
    assert first.previous_series_ids() == []
