"""A Ray dashboard that stops answering while a task watches its job (a dashboard restart, a network outage) is
waited for over the contact window: the job is not stopped and the training completes, with retries=0, waiting in
the worker and in the triggerer. Before, the wait gave up after about 7 s (worker) and 31 s (triggerer) and stopped
the job."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ray_train_helpers import FlakyProxy, jobs_of, run_dag, states, wait_for, xcom
from ray_train_user_loops import GO_FILE, REACHED_FILE

from airflow_ray_train.hooks.ray_train import RayTrainHook

OUTAGE_S = 45.0  # longer than the old 7 s / 31 s


def test_a_dashboard_gone_for_45_s_does_not_stop_a_plain_pytorch_training(ray_conn, airflow_db, monkeypatch):
    proxy = FlakyProxy(ray_conn.dashboard_url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_RAY_FLAKY",
        json.dumps({"conn_type": "ray_train", "host": proxy.address, "password": ray_conn.token}),
    )
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__CONTACT_WINDOW", "300")
    root = Path(os.environ["ART_TEST_RESULTS_DIR"]) / "outage"
    outages: list[tuple[str, float]] = []
    errors: list[BaseException] = []

    def take_the_dashboard_down() -> None:
        try:
            pending = {"train_sync", "train_deferred"}  # dag.test() runs them in either order
            while pending:

                def reached() -> str | None:
                    return next((task for task in sorted(pending) if (root / task / REACHED_FILE).exists()), None)

                task = wait_for(reached, 600, 0.2, "a task to reach its last epoch")
                pending.discard(task)
                folder = root / task
                proxy.down()
                started = time.monotonic()
                time.sleep(OUTAGE_S)
                proxy.up()
                outages.append((task, time.monotonic() - started))
                (folder / GO_FILE).touch()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    for task in ("train_sync", "train_deferred"):
        (root / task).mkdir(parents=True, exist_ok=True)
    fault = threading.Thread(target=take_the_dashboard_down, daemon=True)
    fault.start()
    try:
        dag_run = run_dag("test_ray_train_outage")
    finally:
        proxy.up() if proxy._listener is None else None
    fault.join(60)
    assert not errors, errors
    assert sorted(task for task, _ in outages) == ["train_deferred", "train_sync"]
    assert all(seconds >= OUTAGE_S for _, seconds in outages)
    assert states(dag_run) == {"train_sync": "success", "train_deferred": "success"}
    for task in ("train_sync", "train_deferred"):
        result = xcom(dag_run, task)
        assert result["status"] == "SUCCEEDED" and result["metrics"]["epoch"] == 2, result  # the last epoch
    # One job each, never stopped, never submitted again.
    jobs = jobs_of(RayTrainHook(), "test_ray_train_outage", dag_run.run_id)
    assert sorted(str(job.status) for job in jobs) == ["SUCCEEDED", "SUCCEEDED"]
