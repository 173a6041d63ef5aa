"""Whether a job carries the runtime (``[ray_train] ship_runtime``), decided from the cluster's answer to the
probe job; the stub Jobs API plays the cluster. The real probe runs in test_runtime_distribution.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train.hooks import shipping
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.hooks.shipping import PROBE_LINE, PROBE_PREFIX, ShipRuntime
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.packaging import runtime_package
from airflow_ray_train_runtime.spec import RUNTIME_VERSION

MAJOR, MINOR = RUNTIME_VERSION.split(".")[:2]
NEWER = f"{MAJOR}.{int(MINOR) + 1}.0"
PATCH = f"{MAJOR}.{MINOR}.99"


def cluster(stub_ray: Any, installed: str | None, status: str = "SUCCEEDED") -> list[str]:
    """The stub answers the probe: no such job yet, the submit, the ended job, its log (``installed``: the
    version the cluster's Python has, "none", or None for a log without the probe's line). Returns the ids
    submitted."""
    submitted: list[str] = []

    def respond(method: str, path: str) -> tuple[int, Any]:
        if method == "POST" and path == "/api/jobs/":
            submitted.append("probe")
            return 200, {"submission_id": "probe"}
        if path.endswith("/logs"):
            return 200, {"logs": "" if installed is None else f"{PROBE_LINE} {installed}\n"}
        if path.startswith(f"/api/jobs/{PROBE_PREFIX}_"):
            return (404, {}) if not submitted else (200, {"submission_id": path.split("/")[3], "status": status})
        return 200, {"version": "4", "ray_version": "2.60.0"}

    stub_ray.respond = respond
    return submitted


def test_the_mode_is_checked_when_the_dag_is_parsed_naming_the_field():
    with pytest.raises(RayTrainConfigError, match=r"ship_runtime is 'sometimes'\. Fix: use one of") as refused:
        RayTrainOperator(task_id="t", train_func="m:f", ship_runtime="sometimes")
    assert refused.value.field == "ship_runtime"
    assert RayTrainOperator(task_id="t", train_func="m:f", ship_runtime="NEVER").ship_runtime is ShipRuntime.NEVER


def test_the_probe_id_is_one_per_interpreter_version_and_hour(stub_ray):
    hook = RayTrainHook("ray_stub")
    at = 1_800_000_000.0
    assert hook.probe_submission_id(at) == hook.probe_submission_id(at + 1) != hook.probe_submission_id(at + 3600)
    assert hook.probe_submission_id(at).startswith(f"{PROBE_PREFIX}_")


def test_auto_runs_on_the_very_same_installed_version_and_ships_otherwise(stub_ray, monkeypatch):
    monkeypatch.setattr(shipping, "PROBE_POLL_S", 0.01)
    hook = RayTrainHook("ray_stub")
    for installed, ships in [(RUNTIME_VERSION, False), (PATCH, True), (NEWER, True), ("none", True), (None, True)]:
        stub_ray.seen.clear()
        cluster(stub_ray, installed)
        assert hook.ships_runtime(ShipRuntime.AUTO) is ships, installed
        assert stub_ray.paths("POST") == ["/api/jobs/"]  # the probe, asked once
    env, packages = hook.job_runtime_env(None, ship_runtime=False)
    assert runtime_package().uri not in env.get("py_modules", []) and not packages
    env, packages = hook.job_runtime_env(None, ship_runtime=True)
    assert env["py_modules"] == [runtime_package().uri] and packages == [runtime_package()]


def test_always_asks_nothing(stub_ray):
    hook = RayTrainHook("ray_stub")
    assert hook.ships_runtime(ShipRuntime.ALWAYS) is True
    assert stub_ray.seen == []


@pytest.mark.parametrize(
    ("installed", "says"),
    [
        ("none", "has no airflow-ray-train-runtime installed. Fix: install 'airflow-ray-train-runtime=="),
        (NEWER, f"'{NEWER}': the two speak the same spec and manifest only within one major.minor. Fix: install"),
    ],
    ids=["none installed", "a minor newer"],
)
def test_never_fails_before_submitting_naming_the_versions_and_the_fix(stub_ray, monkeypatch, installed, says):
    monkeypatch.setattr(shipping, "PROBE_POLL_S", 0.01)
    cluster(stub_ray, installed)
    with pytest.raises(RayTrainConfigError) as refused:
        RayTrainHook("ray_stub").ships_runtime(ShipRuntime.NEVER)
    assert says in str(refused.value) and refused.value.field == "ship_runtime"
    assert RUNTIME_VERSION in str(refused.value)


def test_never_runs_on_a_patch_release_and_on_no_answer_leaves_the_check_to_the_driver(stub_ray, monkeypatch):
    monkeypatch.setattr(shipping, "PROBE_POLL_S", 0.01)
    cluster(stub_ray, PATCH)
    assert RayTrainHook("ray_stub").ships_runtime(ShipRuntime.NEVER) is False
    monkeypatch.setattr(shipping, "PROBE_TIMEOUT_S", 0.05)
    cluster(stub_ray, None, status="PENDING")  # the probe never ends
    assert RayTrainHook("ray_stub").installed_runtime() is None
    assert RayTrainHook("ray_stub").ships_runtime(ShipRuntime.NEVER) is False


def test_whether_the_runtime_shipped_never_changes_the_runs_identity(stub_ray):
    """auto may ship the runtime on one try and not on the next (a probe with no answer): the retry must still
    resume the same Train run, so the spec digest counts the runtime by its version only."""
    operator = RayTrainOperator(task_id="t", train_func="m:f", runtime_env={"env_vars": {"A": "1"}}, ship_code=False)
    spec = operator.build_spec({})  # type: ignore[arg-type]
    hook = RayTrainHook("ray_stub")
    shipped, _ = hook.job_runtime_env(operator.runtime_env, ship_runtime=True)
    installed, _ = hook.job_runtime_env(operator.runtime_env, ship_runtime=False)
    assert shipped != installed
    assert operator.spec_digest(spec, shipped) == operator.spec_digest(spec, installed)
    other_code = {**shipped, "py_modules": [*shipped["py_modules"], "gcs://_ray_pkg_user.zip"]}
    assert operator.spec_digest(spec, other_code) != operator.spec_digest(spec, shipped)
    newer = dataclasses.replace(spec, runtime_version=RUNTIME_VERSION + ".post1")
    assert operator.spec_digest(newer, shipped) != operator.spec_digest(spec, shipped)
