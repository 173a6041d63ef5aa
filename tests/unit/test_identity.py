"""A try's identity and what it does with the jobs it finds: names unique across deployments, DAG run
instances, clears and specs; the collect / attach / submit decision over job details."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from airflow_ray_train.hooks.jobs_api import JobInfo
from airflow_ray_train.identity import SPEC_DIGEST_KEY, TryIdentity, other_spec, spec_digest
from airflow_ray_train.try_plan import plan_try
from airflow_ray_train_runtime.spec import TrainSpec

STARTED = datetime(2026, 3, 2, 0, 0, 1, 123456, tzinfo=UTC)


def identity(**changes: object) -> TryIdentity:
    base = TryIdentity(
        deployment_id="prod",
        dag_id="retrain",
        run_id="scheduled__2026-03-02T00:00:00+00:00",
        run_instance="4f1c0e6d",
        task_id="train",
        map_index=-1,
        try_number=1,
        first_try_number=1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def job(ident: TryIdentity, digest: str, status: str, try_number: int | None = None, suffix: str = "") -> JobInfo:
    number = ident.try_number if try_number is None else try_number
    metadata = dataclasses.replace(ident, try_number=number).job_metadata(digest, ident.run_name(digest))
    return JobInfo.from_api(
        {"submission_id": ident.submission_id(number) + suffix, "status": status, "metadata": metadata}
    )


class _Store:
    """The task state store's interface (Airflow 3.3's ``context["task_state_store"]``), in memory."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def get(self, key: str, default: object = None) -> object:
        return self.values.get(key, default)

    def set(self, key: str, value: object, *, retention: object = None) -> None:
        self.values[key] = value


def test_the_run_instance_is_a_token_the_first_try_keeps_in_the_task_state_store():
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=1, max_tries=1)
    store = _Store()
    context = {"ti": ti, "dag_run": SimpleNamespace(start_date=STARTED), "task_state_store": store}
    first = TryIdentity.from_context(context, "prod", retries=1)
    retry = TryIdentity.from_context({**context, "ti": SimpleNamespace(**{**vars(ti), "try_number": 2})}, "prod", 1)
    assert first.run_instance == retry.run_instance == store.values["airflow_ray_train.run_instance"]
    recreated = TryIdentity.from_context({**context, "task_state_store": _Store()}, "prod", retries=1)
    assert recreated.run_instance != first.run_instance  # same run id and start, another DAG run row
    assert recreated.submission_id() != first.submission_id()


def test_the_try_comes_from_the_context_with_the_first_try_of_its_series():
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=3, try_number=2, max_tries=2)
    context = {"ti": ti, "dag_run": SimpleNamespace(start_date=STARTED)}
    first = TryIdentity.from_context(context, "prod", retries=2)
    assert (first.try_number, first.first_try_number, first.map_index) == (2, 1, 3)  # a retry
    assert first.run_instance == STARTED.isoformat()  # no task state store here: the run's start stands in
    # Clearing sets max_tries = try_number + retries: the next try starts a new series.
    cleared = SimpleNamespace(**{**vars(ti), "try_number": 3, "max_tries": 2 + 2})
    again = TryIdentity.from_context({**context, "ti": cleared}, "prod", retries=2)
    assert again.first_try_number == 3 and again.earlier_submission_ids() == []
    assert first.run_name("abc") != again.run_name("abc")  # no resume from the cleared series' checkpoints


@pytest.mark.parametrize(
    "other",
    [
        {"deployment_id": "staging"},
        {"run_instance": "9a77d2b0"},  # the run deleted and made again
        {"map_index": 0},
    ],
)
def test_another_deployment_or_run_instance_never_shares_a_name(other):
    ours, theirs = identity(), identity(**other)
    assert ours.submission_id() != theirs.submission_id()
    assert ours.run_name("abc") != theirs.run_name("abc")
    assert theirs.not_ours(ours.job_metadata("abc", ours.run_name("abc"))) is not None


def test_retries_share_the_train_run_and_a_changed_spec_does_not():
    assert identity(try_number=3).run_name("abc") == identity().run_name("abc")
    assert identity().run_name("abc") != identity().run_name("abd")
    assert identity(try_number=3).earlier_submission_ids() == [identity().submission_id(2), identity().submission_id(1)]


def test_long_names_stay_valid_and_apart():
    long = identity(dag_id="d" * 60, task_id="t" * 60, run_id="scheduled__2026-03-02T00:00:00.000000+00:00" * 2)
    cut_alike = dataclasses.replace(long, task_id="t" * 60 + "_other")
    for ident in (long, cut_alike):
        TrainSpec(train_func="m:f", run_name=ident.run_name("abc"), submission_id=ident.submission_id(12))
        assert len(ident.submission_id(12)) <= 120 and len(ident.run_name("abc")) <= 150
    assert long.submission_id() != cut_alike.submission_id()


def test_the_spec_digest_covers_what_runs_and_only_that():
    spec = {"train_func": "m:f", "train_loop_config": {"lr": 0.1}, "runtime_env": {"py_modules": ["gcs://a.zip"]}}
    assert spec_digest(spec) == spec_digest(dict(reversed(list(spec.items()))))
    assert spec_digest(spec) != spec_digest({**spec, "runtime_env": {"py_modules": ["gcs://b.zip"]}})
    assert other_spec({SPEC_DIGEST_KEY: spec_digest(spec)}, spec_digest(spec)) is None
    assert "another spec" in str(other_spec({SPEC_DIGEST_KEY: "x"}, spec_digest(spec)))


def test_first_try_submits_under_its_own_id():
    plan = plan_try(identity(), "abc", [])
    assert (plan.action, plan.submission_id, plan.notes) == ("submit", identity().submission_id(), [])


@pytest.mark.parametrize(("status", "action"), [("SUCCEEDED", "collect"), ("RUNNING", "attach"), ("PENDING", "attach")])
def test_a_retry_collects_or_attaches_to_its_series_job_with_the_same_spec(status, action):
    retry = identity(try_number=2)
    plan = plan_try(retry, "abc", [job(retry, "abc", status, try_number=1)])
    assert plan.action == action and plan.job is not None and plan.job.submission_id.endswith("-try1")


@pytest.mark.parametrize("status", ["FAILED", "STOPPED"])
def test_a_retry_after_a_failed_or_stopped_job_submits_again_to_resume(status):
    retry = identity(try_number=2)
    plan = plan_try(retry, "abc", [job(retry, "abc", status, try_number=1)])
    assert plan.action == "submit" and plan.submission_id == retry.submission_id()
    assert "resumes its Train run" in plan.notes[0]


def test_a_job_of_another_spec_is_not_used_and_if_running_is_stopped():
    retry = identity(try_number=3)
    found = [job(retry, "old", "RUNNING", try_number=2), job(retry, "old", "SUCCEEDED", try_number=1)]
    plan = plan_try(retry, "new", found)
    assert plan.action == "submit" and plan.stop == [found[0].submission_id]
    assert all("another spec" in note for note in plan.notes) and len(plan.notes) == 2


def test_a_job_someone_else_holds_under_this_id_is_left_alone_and_a_free_id_is_used():
    ours = identity()
    foreign = job(identity(deployment_id="staging"), "abc", "RUNNING")
    foreign = dataclasses.replace(foreign, submission_id=ours.submission_id())
    plan = plan_try(ours, "abc", [foreign])
    assert plan.action == "submit" and plan.submission_id == ours.submission_id() + "-2" and plan.stop == []
    assert "not this task's" in plan.notes[0] and "airflow_deployment_id is 'staging'" in plan.notes[0]


def test_this_tries_own_earlier_submit_is_attached_and_a_resubmit_is_found_newest_first():
    ours = identity(try_number=2)
    resubmitted = [job(ours, "abc", "RUNNING", suffix="-2"), job(ours, "abc", "FAILED")]
    plan = plan_try(ours, "abc", resubmitted)
    assert plan.action == "attach" and plan.job is not None and plan.job.submission_id.endswith("-try2-2")


@pytest.mark.parametrize(
    "other",
    [
        {"run_id": "scheduled__2026-03-03T00:00:00+00:00"},  # the next night
        {"map_index": 1},  # a mapped task's other instance
        {"deployment_id": "staging"},
        {"first_try_number": 3},  # the task cleared: a new series
    ],
)
def test_a_users_run_name_is_combined_with_the_identity_never_used_alone(other):
    def train_run(ident: TryIdentity) -> str:
        return TrainSpec(
            train_func="m:f",
            run_name=ident.run_name("abc"),
            submission_id=ident.submission_id(),
            run_config={"name": "clf"},
        ).effective_run_name

    ours, theirs = train_run(identity()), train_run(identity(**other))
    assert ours != theirs
    assert ours.startswith("clf.") and theirs.startswith("clf.")  # still the user's name, recognisably
    assert train_run(identity(try_number=2)) == ours  # a retry still resumes its own run
    TrainSpec(train_func="m:f", run_name=ours, submission_id="s")  # a valid Train run name
