"""The runtime as a distribution of its own, on a cluster that has it installed.

A fresh venv holds only ``ray[default,train]``, the CPU torch and the ``airflow-ray-train-runtime`` wheel built
from this checkout: no Airflow, no provider. A head started from it runs the provider's jobs with shipping off
(``ship_runtime="never"``): the example's plain PyTorch loop trains on the installed runtime, and no runtime
package travels. Then the venv's runtime is swapped for one a minor version newer, and one a minor version
older: the task fails before submitting, naming both versions and the fix, and a job submitted past that
check fails at once in its driver, saying the same. A patch release apart still runs. ``auto`` on the session's
head (whose venv has the runtime installed) runs on it too; ``always`` ships it (the rest of the suite).

The venv is made once and cached beside the version matrix's (``scripts/compat.py``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from compat import CPU_TORCH, Venv
from ray_train_examples.pytorch_classifier import NUM_CLASSES
from ray_train_helpers import FakeTaskInstance

from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train.hooks import jobs_api, shipping
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.hooks.shipping import ShipRuntime
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.packaging import runtime_package
from airflow_ray_train_runtime.spec import RUNTIME_VERSION, JobStatus, TrainSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RAY_VERSION = metadata.version("ray")
CONN_ID = "ray_train_runtime_only"
MAJOR, MINOR, _ = (int(part) for part in RUNTIME_VERSION.split(".")[:3])
NEWER, OLDER, PATCHED = f"{MAJOR}.{MINOR + 1}.0", f"{MAJOR}.{max(MINOR - 1, 0)}.9", f"{MAJOR}.{MINOR}.99"


@dataclass
class RuntimeCluster:
    venv: Venv
    head: Any
    wheels: Path

    def python(self, code: str) -> str:
        # Outside the checkout: `python -c` puts the working directory first on sys.path.
        done = subprocess.run(
            [str(self.venv.bin / "python"), "-c", code], capture_output=True, text=True, check=True, cwd=self.wheels
        )
        return done.stdout.strip()

    def install_runtime(self, version: str = RUNTIME_VERSION) -> str:
        """Build the runtime wheel from this checkout, as ``version``, and put it in the venv in place of the
        one there; returns the version the venv then reports."""
        source = self.wheels / f"src-{version}"
        if not source.exists():
            shutil.copytree(
                REPO / "runtime", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
            )
            (source / "airflow_ray_train_runtime" / "VERSION").write_text(version + "\n")
        out = self.wheels / version
        wheel = next(out.glob("*.whl"), None)
        if wheel is None:
            pip = [str(self.venv.bin / "python"), "-m", "pip"]
            subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(out), str(source)], check=True)
            wheel = next(out.glob("*.whl"))
        pip = [str(self.venv.bin / "python"), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
        subprocess.run([*pip, str(wheel)], check=True)
        return self.python("import importlib.metadata as m; print(m.version('airflow-ray-train-runtime'))")


@pytest.fixture(scope="module")
def runtime_cluster(tmp_path_factory: pytest.TempPathFactory):
    from airflow_ray_train.local_cluster import start_ray_head

    venv = Venv(f"runtime-only-ray-{RAY_VERSION}-py3.11", "3.11", (f"ray[default,train]=={RAY_VERSION}",), (CPU_TORCH,))
    venv.ensure()
    cluster = RuntimeCluster(venv, None, tmp_path_factory.mktemp("runtime_wheels"))
    assert cluster.install_runtime() == RUNTIME_VERSION
    # Only Ray, torch and the runtime: neither Airflow nor the provider can be imported there.
    found = cluster.python(
        "import importlib.util as u; print([m for m in ('airflow', 'airflow_ray_train', 'airflow_ray_train_runtime',"
        " 'ray', 'torch') if u.find_spec(m) is not None])"
    )
    assert found == "['airflow_ray_train_runtime', 'ray', 'torch']"
    temp_dir = tempfile.mkdtemp(prefix="art_runtime_only_")
    cluster.head = start_ray_head(
        temp_dir=temp_dir, token=secrets.token_hex(16), num_cpus=4, ray_cli=str(venv.bin / "ray"), timeout=300
    )
    try:
        yield cluster
    finally:
        cluster.head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def conn(runtime_cluster, monkeypatch, direct_deployment):
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "ray_train",
                "host": runtime_cluster.head.dashboard_url,
                "password": runtime_cluster.head.token,
            }
        ),
    )
    # Each step below changes what the cluster has installed: the probe asks again each second, not each hour.
    monkeypatch.setattr(shipping, "PROBE_PERIOD_S", 1)
    return RayTrainHook(ray_conn_id=CONN_ID)


def plain_pytorch(task_id: str, ship_runtime: str) -> RayTrainOperator:
    return RayTrainOperator(
        task_id=task_id,
        train_func="ray_train_examples.pytorch_classifier:train_func",
        train_loop_config={"lr": 3e-3, "epochs": 3, "hidden": 32, "batch_size": 64},
        scaling_config={"num_workers": 2},
        ray_conn_id=CONN_ID,
        ship_runtime=ship_runtime,
        poll_interval=1.0,
    )


def shipped_modules(hook: RayTrainHook, job_id: str) -> list[str]:
    job = hook._json("GET", jobs_api.job_path(job_id))
    return list((job.get("runtime_env") or {}).get("py_modules") or [])


def test_a_cluster_with_only_ray_and_the_runtime_wheel_trains_with_shipping_off(runtime_cluster, conn):
    time.sleep(1.1)  # a probe period of its own
    result = plain_pytorch("runtime_installed", "never").execute(FakeTaskInstance("runtime_installed").context())  # type: ignore[arg-type]
    assert result["status"] == "SUCCEEDED", result["error"]
    # It learned: well above chance (1 in NUM_CLASSES) on the held-out split.
    assert result["metrics"]["epoch"] == 2 and result["metrics"]["val_accuracy"] > 2 / NUM_CLASSES
    modules = shipped_modules(conn, result["job_id"])
    assert modules and runtime_package().uri not in modules  # the user's code travels, the runtime does not
    manifest = json.loads(Path(result["manifest_path"]).read_text())
    assert manifest["runtime_version"] == RUNTIME_VERSION


@pytest.mark.parametrize("installed", [NEWER, OLDER], ids=["a minor newer", "a minor older"])
def test_a_runtime_of_another_minor_fails_before_training_naming_both_versions(runtime_cluster, conn, installed):
    assert runtime_cluster.install_runtime(installed) == installed
    try:
        time.sleep(1.1)
        with pytest.raises(RayTrainConfigError) as refused:
            plain_pytorch("runtime_skew", "never").execute(FakeTaskInstance("runtime_skew").context())  # type: ignore[arg-type]
        message = str(refused.value)
        assert refused.value.field == "ship_runtime"
        assert (
            installed in message
            and RUNTIME_VERSION in message
            and "Fix: install 'airflow-ray-train-runtime==" in message
        )
        # Past that check (a probe with no answer), the job's driver refuses the spec at once, saying the same.
        spec = TrainSpec(
            train_func="ray_train_examples.pytorch_classifier:train_func",
            run_name=f"skew-{secrets.token_hex(4)}",
            submission_id=f"skew-{secrets.token_hex(6)}",
        )
        started = time.monotonic()
        job_id = conn.submit_job(entrypoint=conn.runtime_entrypoint(spec.to_arg()), submission_id=spec.submission_id)
        while not JobStatus.ended(conn.get_job_info(job_id).status):
            time.sleep(0.5)
        assert conn.get_job_info(job_id).status == JobStatus.FAILED and time.monotonic() - started < 60
        log = conn.get_job_logs(job_id)
        assert (
            f"runtime_version is '{RUNTIME_VERSION}'" in log and repr(installed) in log and "RayTrainWorker" not in log
        )
        # auto ships the provider's own runtime instead, which shadows the installed one: it runs.
        time.sleep(1.1)
        assert conn.ships_runtime(ShipRuntime.AUTO) is True
    finally:
        runtime_cluster.install_runtime()


def test_a_patch_release_apart_runs_on_the_installed_runtime(runtime_cluster, conn):
    assert runtime_cluster.install_runtime(PATCHED) == PATCHED
    try:
        time.sleep(1.1)
        assert conn.installed_runtime() == PATCHED
        assert conn.ships_runtime(ShipRuntime.NEVER) is False  # the same major.minor: no refusal
        assert conn.ships_runtime(ShipRuntime.AUTO) is True  # not the very same version: auto ships its own
    finally:
        runtime_cluster.install_runtime()


def test_auto_runs_on_the_runtime_the_session_head_has_installed(ray_conn, direct_deployment, monkeypatch):
    """The session's head runs the project's venv, where the runtime is installed (editable): ``auto`` sends
    no runtime package; ``always`` does."""
    hook = RayTrainHook()
    assert hook.installed_runtime() == RUNTIME_VERSION
    assert hook.ships_runtime(ShipRuntime.AUTO) is False and hook.ships_runtime(ShipRuntime.ALWAYS) is True
    operator = RayTrainOperator(
        task_id="auto_runtime",
        train_func="ray_train_test_loops:slow_counter",
        train_loop_config={"epochs": 1, "sleep_s": 0.1},
        scaling_config={"num_workers": 1},
        ship_runtime="auto",
        poll_interval=1.0,
    )
    result = operator.execute(FakeTaskInstance("auto_runtime").context())  # type: ignore[arg-type]
    assert result["status"] == "SUCCEEDED", result["error"]
    assert runtime_package().uri not in shipped_modules(hook, result["job_id"])
