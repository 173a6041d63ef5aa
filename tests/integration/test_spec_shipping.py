"""The spec travels beside the code, not on the command line: a 1 MB train_loop_config trains (the shell's
128 KiB argument limit no longer applies, and nothing of it shows in the entrypoint), and one too large for any
route fails before submitting, naming the field, the limit and the fix."""

from __future__ import annotations

import pytest
from ray_train_helpers import FakeTaskInstance, jobs_of

from airflow_ray_train import packaging
from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.operators.ray_train import RayTrainOperator

pytestmark = [pytest.mark.integration]
FILES = [f"s3://training-data/shard-{i:05d}/part-{i:06d}.parquet" for i in range(30_000)]


def _operator(task_id: str) -> RayTrainOperator:
    return RayTrainOperator(
        task_id=task_id,
        train_func="ray_train_test_loops:count_files",
        train_loop_config={"files": FILES},
        scaling_config={"num_workers": 1},
        poll_interval=1.0,
    )


def test_a_one_megabyte_train_loop_config_trains_and_stays_off_the_command_line(ray_conn, direct_deployment):
    assert sum(len(f) for f in FILES) > 1_000_000
    result = _operator("big_config").execute(FakeTaskInstance("big_config").context())
    assert result["status"] == "SUCCEEDED"
    # The workers got the config whole, and not the spec's package: only the driver reads it, and a package
    # new for every job would give the run's processes a runtime env the cluster sets up for that job alone.
    assert result["metrics"] == {"files": 30_000, "last": FILES[-1], "spec_folders_on_worker_path": 0}
    hook = RayTrainHook()
    entrypoint = hook.get_job_info(result["job_id"]).entrypoint
    assert len(entrypoint) < 400 and "training-data" not in entrypoint and "shipped:" in entrypoint
    hook.close()


def test_a_config_too_large_to_ship_fails_before_submitting(ray_conn, direct_deployment, monkeypatch):
    monkeypatch.setattr(packaging, "MAX_PACKAGE_BYTES", 512 * 1024)
    ti = FakeTaskInstance("too_big_config")
    with pytest.raises(RayTrainConfigError) as raised:
        _operator("too_big_config").execute(ti.context())
    assert raised.value.field == "train_loop_config"
    assert "over the 512.0 KiB" in str(raised.value) and "put the data in storage" in str(raised.value)
    hook = RayTrainHook()
    assert not [j for j in jobs_of(hook, ti.dag_id) if j.metadata.get("airflow_task_id") == "too_big_config"]
    hook.close()
