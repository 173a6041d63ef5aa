"""Test environment: a private Airflow home and metadata DB, and (for integration tests) one real local Ray
head per session with its own temp dir, ports and token, and one real MLflow tracking server (SQLite, local
artifacts, basic auth) on a free loopback port, each stopped by its process group when the session ends.

Airflow reads its configuration at import, so the environment is set here, before any test imports it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: An external Ray head for the session (its dashboard address and token), instead of one started here.
EXTERNAL_HEAD_ENV = "ART_TEST_RAY_ADDRESS"
EXTERNAL_TOKEN_ENV = "ART_TEST_RAY_TOKEN"
_ROOT = Path(tempfile.mkdtemp(prefix="art_tests_"))
AIRFLOW_HOME = _ROOT / "airflow"
DAGS_FOLDER = _ROOT / "dags"
STORAGE_PATH = _ROOT / "ray_results"
RESULTS_DIR = _ROOT / "results"
for folder in (AIRFLOW_HOME, DAGS_FOLDER, STORAGE_PATH, RESULTS_DIR):
    folder.mkdir(parents=True)
# The dags folder holds the example DAGs and the test DAGs side by side (dag.test() needs them in a bundle).
for source in [*(REPO / "example_dags").iterdir(), *(REPO / "tests" / "dags").iterdir()]:
    if source.name != "__pycache__":
        (DAGS_FOLDER / source.name).symlink_to(source)

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__RAY_TRAIN__DEFAULT_STORAGE_PATH": str(STORAGE_PATH),
        # The session's head runs this venv, which has the runtime installed: `auto` would run every job on it.
        # The suite ships it, as to a cluster without it; test_runtime_distribution.py covers auto and never.
        "AIRFLOW__RAY_TRAIN__SHIP_RUNTIME": "always",
        "ART_TEST_RESULTS_DIR": str(RESULTS_DIR),
        # The embedded cluster of a test run never touches the user's own (~/.airflow_ray_train).
        "AIRFLOW_RAY_TRAIN_LOCAL_DIR": str(_ROOT / "embedded"),
    }
)
for key in (
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "AIRFLOW_CONN_RAY_TRAIN_DEFAULT",
    "AIRFLOW_CONN_MLFLOW_DEFAULT",
    "AIRFLOW__RAY_TRAIN__MLFLOW_CONN_ID",
    "AIRFLOW__RAY_TRAIN__MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_URI",
):
    os.environ.pop(key, None)
sys.path.insert(0, str(DAGS_FOLDER))
sys.path.insert(1, str(REPO / "scripts"))

#: Each folder of tests/ is a tier, and its name is the tier's marker (registered in pyproject.toml).
TIERS = ("unit", "integration", "e2e", "compose")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its folder's tier, so ``-m`` selects exactly what the folders hold."""
    for item in items:
        folder = item.path.relative_to(REPO / "tests").parts[0]
        if folder in TIERS:
            item.add_marker(folder)


@pytest.fixture(scope="session")
def ray_head():
    """A real local Ray head (dashboard + Jobs API) with token auth, shared by the whole session; or, where
    ``ART_TEST_RAY_ADDRESS`` names one (``make compat`` starts one from another Ray's venv), that head, with
    the token in ``ART_TEST_RAY_TOKEN``, left running."""
    from airflow_ray_train.local_cluster import RayHead, start_ray_head

    external = os.environ.get(EXTERNAL_HEAD_ENV)
    if external:
        yield RayHead(dashboard_url=external, gcs_address="", token=os.environ.get(EXTERNAL_TOKEN_ENV, ""))
        return
    temp_dir = tempfile.mkdtemp(prefix="art_ray_")
    head = start_ray_head(temp_dir=temp_dir, token=secrets.token_hex(16), num_cpus=4)
    try:
        yield head
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_conn(ray_head):
    """Point ``ray_train_default`` at the session's head (as an env connection, the way users may)."""
    import json

    os.environ["AIRFLOW_CONN_RAY_TRAIN_DEFAULT"] = json.dumps(
        {"conn_type": "ray_train", "host": ray_head.dashboard_url, "password": ray_head.token}
    )
    yield ray_head
    os.environ.pop("AIRFLOW_CONN_RAY_TRAIN_DEFAULT", None)


@pytest.fixture(scope="session")
def mlflow_server():
    """A real MLflow tracking server with basic auth, shared by the whole session."""
    from local_mlflow import start_mlflow_server

    root = Path(tempfile.mkdtemp(prefix="art_mlflow_"))
    server = start_mlflow_server(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_conn(mlflow_server, monkeypatch):
    """Track every task to the session's MLflow server: the connection ``mlflow_default`` (its admin's login and
    password) named by ``[ray_train] mlflow_conn_id``, as a deployment would set it."""
    import json

    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps(
            {
                "conn_type": "mlflow",
                "host": mlflow_server.url,
                "login": mlflow_server.username,
                "password": mlflow_server.password,
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__MLFLOW_CONN_ID", "mlflow_default")
    return mlflow_server


@pytest.fixture
def mlflow_client(mlflow_conn, monkeypatch):
    """MLflow's own client (and ``mlflow``'s module-level API), logged in to the session's server as its admin."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow_conn.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_conn.password)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_conn.url)
    mlflow.set_tracking_uri(mlflow_conn.url)
    return mlflow.MlflowClient(mlflow_conn.url)


@pytest.fixture
def direct_deployment(monkeypatch):
    """A deployment id for tasks run outside a task runner (which cannot keep one in a Variable)."""
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__DEPLOYMENT_ID", "tests-direct")
    return "tests-direct"


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh Airflow metadata DB (SQLite) for the session."""
    from airflow.utils import db

    db.resetdb()
    yield


@pytest.fixture(scope="session", autouse=True)
def _cleanup_root():
    yield
    shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _failure_callbacks_see_the_exception():
    """``dag.test()`` before Airflow 3.2 runs ``on_failure_callback`` without ``context["exception"]``, which
    the real task runner sets: set it the same way there, so tests read the error a user sees."""
    from packaging.version import Version

    from airflow_ray_train.compat import AIRFLOW_VERSION

    if AIRFLOW_VERSION >= Version("3.2"):
        yield
        return
    from airflow.sdk.execution_time import task_runner

    original = task_runner.finalize

    def finalize(ti, state, context, log, error=None):
        context["exception"] = error
        return original(ti, state, context, log, error)

    task_runner.finalize = finalize
    yield
    task_runner.finalize = original
