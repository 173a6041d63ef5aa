"""`make demo`: run an example retraining DAG end to end on the embedded local Ray cluster.

No connection is configured, so the operator's hook starts a local Ray head (dashboard + Jobs API) on this
machine; Airflow's metadata DB is SQLite under .demo/. Prints what each task did, then stops the head.

Usage: python scripts/demo.py [DAG_ID]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"
DEFAULT_DAG_ID = "example_ray_train_lightning"

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
for key in ("AIRFLOW_CONN_RAY_TRAIN_DEFAULT", "RAY_ADDRESS"):
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


def main() -> int:
    from airflow.models.xcom import XComModel
    from airflow.utils import db
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_ray_train.local_cluster import LocalRayCluster

    dag_id = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DAG_ID
    print(f"== airflow-ray-train demo: {dag_id} on the embedded local Ray cluster ==", flush=True)
    db.resetdb()
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
            elif result is not None:
                print(f"   returned   : {_shorten(result)}")
    return 0 if str(dag_run.state) == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
