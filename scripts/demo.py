"""`make demo`: run an example retraining DAG end to end on the embedded local Ray cluster.

No Ray connection is configured, so the operator's hook starts a local Ray head (dashboard + Jobs API) on this
machine; Airflow's metadata DB is SQLite under .demo/. The training is tracked on a real MLflow server started
here (under .demo/mlflow, basic auth), which registers the model; the promote task moves its `champion` alias
to the new version only when it beats the champion on held-out data. Prints what each task did and where the
MLflow UI is, then stops the Ray head; the MLflow server stays up for its UI (`python scripts/local_mlflow.py
stop .demo/mlflow` stops it), and keeps its runs for the next demo.

Usage: python scripts/demo.py [DAG_ID]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from local_mlflow import MlflowServer, running_server, start_mlflow_server

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"
DEFAULT_DAG_ID = "example_ray_train_lightning"
MLFLOW_PORT = 5000

os.environ.update(
    {
        "AIRFLOW_HOME": str(DEMO / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{DEMO / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__RAY_TRAIN__DEFAULT_STORAGE_PATH": str(DEMO / "ray_results"),
        "AIRFLOW_RAY_TRAIN_LOCAL_DIR": str(DEMO / "embedded"),
        "AIRFLOW_VAR_RAY_TRAIN_MODEL_REGISTRY": str(DEMO / "model_registry"),
    }
)
# The demo shows the embedded default: no connection, no external cluster address.
for key in ("AIRFLOW_CONN_RAY_TRAIN_DEFAULT", "RAY_ADDRESS", "AIRFLOW__RAY_TRAIN__MLFLOW_TRACKING_URI"):
    os.environ.pop(key, None)
(DEMO / "airflow").mkdir(parents=True, exist_ok=True)
sys.path.insert(0, str(REPO / "example_dags"))


def _find_dag(dag_id: str):  # type: ignore[no-untyped-def]
    import importlib

    for path in sorted((REPO / "example_dags").glob("*.py")):
        module = importlib.import_module(path.stem)
        for value in vars(module).values():
            if getattr(value, "dag_id", None) == dag_id and hasattr(value, "test"):
                return value
    raise SystemExit(f"no example DAG with dag_id {dag_id!r} in {REPO / 'example_dags'}")


def _shorten(value: object, limit: int = 600) -> str:
    text = json.dumps(value, indent=2, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + " ..."


def start_mlflow() -> MlflowServer:
    """The demo's MLflow server (the one left running by the last demo, else a new one), set as the connection
    ``mlflow_default`` that every task tracks to (``[ray_train] mlflow_conn_id``)."""
    root = DEMO / "mlflow"
    server = running_server(root)
    if server is None:
        print(f"== starting an MLflow server under {root} (a minute or two) ==", flush=True)
        server = start_mlflow_server(root, port=MLFLOW_PORT)
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
        {"conn_type": "mlflow", "host": server.url, "login": server.username, "password": server.password}
    )
    os.environ["AIRFLOW__RAY_TRAIN__MLFLOW_CONN_ID"] = "mlflow_default"
    return server


def main() -> int:
    from airflow.models.xcom import XComModel
    from airflow.utils import db
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_ray_train.local_cluster import LocalRayCluster
    from airflow_ray_train.usage import usage_sentence

    dag_id = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DAG_ID
    print(f"== airflow-ray-train demo: {dag_id} on the embedded local Ray cluster ==", flush=True)
    db.resetdb()
    mlflow = start_mlflow()
    dag = _find_dag(dag_id)
    started = time.monotonic()
    try:
        dag_run = dag.test()
    finally:
        LocalRayCluster().stop()
    elapsed = time.monotonic() - started

    print(f"\n== DAG run {dag_run.run_id}: {dag_run.state} in {elapsed:.0f} s ==")
    with create_session() as session:
        tis = sorted(dag_run.get_task_instances(session=session), key=lambda ti: ti.start_date or ti.end_date or 0)
        rows = session.scalars(
            select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id)
        ).all()
        xcoms = {(row.task_id, row.key): XComModel.deserialize_value(row) for row in rows}
        for ti in tis:
            print(f"\n-- task {ti.task_id}: {ti.state}")
            result = xcoms.get((ti.task_id, "return_value"))
            if isinstance(result, str) and result[:1] in "{[":
                result = json.loads(result)
            if isinstance(result, dict) and "job_id" in result:  # the RayTrainOperator XCom contract
                print(f"   checkpoint : {result['checkpoint_path']}")
                print(f"   metrics    : {_shorten(result['metrics'])}")
                print(f"   best       : {result['best_checkpoint_path']}")
                print(f"   history    : {result['metrics_history_path']}")
                print(f"   curve      : {result.get('learning_curve_path')}")
                print(f"   manifest   : {result['manifest_path']}")
                print(f"   ray job    : {result['job_id']} ({result['status']})")
                print(f"   mlflow run : {result.get('mlflow_run_url')}")
                print(f"   version    : {result.get('model_version')}")
                if result.get("usage"):
                    print(f"   usage      : {usage_sentence(result['usage']).removeprefix('Usage: ')}")
            elif isinstance(result, dict) and "moved" in result:  # the PromoteModelVersionOperator XCom
                before = result["previous_version"]
                if before is not None and result["previous_value"] is not None:
                    before = f"{before} ({result['previous_value']:.3f})"
                print(
                    f"   {'promoted' if result['moved'] else 'kept out'}   : version {result['version']} "
                    f"({result['value']:.3f}); {result['alias']} before: {before or 'none'}"
                )
            elif result is not None:
                print(f"   returned   : {_shorten(result)}")
    print(
        f"\n== MLflow UI: {mlflow.url}  (user {mlflow.username}, password in {DEMO / 'mlflow' / 'admin_password'})\n"
        f"   Experiments -> {dag_id} -> the newest run: Model metrics shows the curves, Artifacts the history,\n"
        "   the learning curve and the logged model; Models -> the registered model -> Aliases shows the champion.\n"
        "   Stop it with: python scripts/local_mlflow.py stop .demo/mlflow"
    )
    return 0 if str(dag_run.state) == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
