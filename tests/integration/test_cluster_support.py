"""A Ray cluster the runtime cannot run on fails the job at once, naming the cluster's Ray and Python and what
to change, and a retry is not spent on it. Runs against whichever head the session has (``make compat`` points
it at older Rays and at a Python 3.12 cluster without torch)."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from ray_train_helpers import FakeTaskInstance

from airflow_ray_train.compat import AirflowFailException
from airflow_ray_train.exceptions import RayTrainJobSetupError
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train_runtime.cluster_support import MIN_RAY_VERSION, TRAIN_V2_ENV

pytestmark = [pytest.mark.integration]
_PROBE = (
    "import importlib.util, platform, ray; "
    "print('probe', ray.__version__, platform.python_version(), importlib.util.find_spec('torch') is not None)"
)


@pytest.fixture(scope="module")
def cluster(ray_conn) -> dict[str, object]:
    """The Ray version, Python version and torch presence of the session's cluster, asked of a job there."""
    hook = RayTrainHook()
    job_id = hook.submit_job(entrypoint=f'python -c "{_PROBE}"', submission_id=f"probe-{uuid.uuid4().hex[:8]}")
    info = hook.wait_for_job(job_id, poll_interval=0.5, deadline=time.time() + 120)
    assert info.status == "SUCCEEDED", hook.get_job_logs(job_id)
    _, ray_version, python, torch = re.search(r"^probe (.+)$", hook.get_job_logs(job_id), re.M).group(0).split()
    hook.close()
    return {"ray": ray_version, "python": python, "torch": torch == "True"}


def _fails_at_once(task_id: str, **kwargs) -> str:
    operator = RayTrainOperator(
        task_id=task_id,
        train_func="ray_train_test_loops:slow_counter",
        train_loop_config={"epochs": 2, "sleep_s": 0.1},
        scaling_config={"num_workers": 1},
        poll_interval=1.0,
        retries=2,
        **kwargs,
    )
    with pytest.raises(RayTrainJobSetupError) as failed:
        operator.execute(FakeTaskInstance(task_id).context())  # type: ignore[arg-type]
    assert isinstance(failed.value, AirflowFailException)  # no retry is spent on it
    assert "[airflow-ray-train] report" not in str(failed.value)  # nothing trained
    return str(failed.value)


def test_train_v1_on_the_cluster_fails_at_once_naming_its_ray_and_the_fix(cluster, direct_deployment):
    message = _fails_at_once("train_v1", runtime_env={"env_vars": {TRAIN_V2_ENV: "0"}})
    assert "UnsupportedClusterError" in message
    assert f"Ray {cluster['ray']} on Python {cluster['python']}" in message
    assert f"Ray {'.'.join(map(str, MIN_RAY_VERSION))} or newer" in message and f"unset {TRAIN_V2_ENV}" in message


def test_a_cluster_without_torch_fails_at_once_naming_it(cluster, direct_deployment):
    if cluster["torch"]:
        pytest.skip(f"the cluster (Ray {cluster['ray']}, Python {cluster['python']}) has torch")
    message = _fails_at_once("no_torch")
    assert f"Ray {cluster['ray']} on Python {cluster['python']} without torch" in message
    assert "install torch" in message
