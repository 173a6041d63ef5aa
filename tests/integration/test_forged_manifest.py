"""A job's result comes from its own manifest, through the operator on a real Ray head: a data row that prints a
manifest-like line in a worker's exception does not replace the real manifest (the task's error still names the
ValueError), and a manifest line that names another job is not taken for this job's result."""

from __future__ import annotations

import sys
import textwrap

import pytest
from ray_train_helpers import FakeTaskInstance

from airflow_ray_train.exceptions import RayTrainJobError
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train_runtime.spec import MANIFEST_MARKER, ResultManifest

pytestmark = [pytest.mark.integration]

FORGED = ResultManifest(
    status="SUCCEEDED",
    submission_id="airflow-someone.else-0000000000000000-try1",
    run_name="forged",
    run_path="/attacker/run",
    manifest_path="/attacker/run/manifest.json",
    checkpoint_path="/attacker/checkpoint",
    metrics={"accuracy": 1.0},
)
FORGED_FAILURE = ResultManifest(
    status="FAILED",
    submission_id="airflow-someone.else-0000000000000000-try1",
    run_name="forged",
    run_path="/attacker/run",
    manifest_path="/attacker/run/manifest.json",
    error={"type": "ForgedError", "message": "not what happened", "traceback": ""},
)

LOOPS = textwrap.dedent(
    '''
    """Loops whose data (or whose module) prints manifest-like lines."""
    import os

    FORGED = {forged!r}
    FORGED_FAILURE = {forged_failure!r}

    if os.environ.get("ART_FORGE_AT_IMPORT") == "1" and os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # In the job's driver only: a manifest line for another job, then the driver ends before its own.
        print(FORGED, flush=True)
        os._exit(0)


    def bad_row(config):
        row = "id=7 text=ok\\n" + FORGED_FAILURE + "\\n" + FORGED
        raise ValueError(f"bad row: {{row}}")


    def forges_at_import(config):
        pass
    '''
)


@pytest.fixture
def loops(tmp_path, monkeypatch):
    (tmp_path / "forging_loops.py").write_text(
        LOOPS.format(
            forged=MANIFEST_MARKER + FORGED.to_json(), forged_failure=MANIFEST_MARKER + FORGED_FAILURE.to_json()
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("forging_loops", None)
    return "forging_loops"


def _operator(task_id: str, train_func: str, **kwargs: object) -> RayTrainOperator:
    return RayTrainOperator(
        task_id=task_id,
        train_func=train_func,
        scaling_config={"num_workers": 1},
        poll_interval=1.0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_data_row_that_prints_a_manifest_line_does_not_replace_the_real_manifest(ray_conn, direct_deployment, loops):
    ti = FakeTaskInstance("forged_row")
    with pytest.raises(RayTrainJobError) as raised:
        _operator("forged_row", f"{loops}:bad_row").execute(ti.context())
    message = str(raised.value)
    training_error = next(line for line in message.splitlines() if line.startswith("Training error: "))
    assert training_error.startswith("Training error: ValueError: ") and "bad row: id=7" in training_error, message
    manifest = raised.value.manifest
    assert manifest is not None and manifest["error"]["type"] == "ValueError"
    assert manifest["submission_id"] == ti.xcoms["job_id"] and manifest["checkpoint_path"] != "/attacker/checkpoint"


def test_a_manifest_line_that_names_another_job_is_not_this_jobs_result(ray_conn, direct_deployment, loops):
    """Needs the operator to read the manifest with ``read_manifest(line, job_id=...)``."""
    ti = FakeTaskInstance("forged_at_import")
    operator = _operator(
        "forged_at_import", f"{loops}:forges_at_import", runtime_env={"env_vars": {"ART_FORGE_AT_IMPORT": "1"}}
    )
    with pytest.raises(RayTrainJobError) as raised:  # the job "succeeded", but left no manifest of its own
        operator.execute(ti.context())
    hook = RayTrainHook()
    try:
        log = hook.get_job_logs(ti.xcoms["job_id"])
    finally:
        hook.close()
    assert MANIFEST_MARKER + FORGED.to_json() in log.splitlines()  # the last manifest line of the log: forged
    assert raised.value.manifest is None and "/attacker" not in str(raised.value.manifest_path)
