"""The result does not depend on the log: where the job's log cannot give its manifest (here its line is over the
follower's limit, as a huge one would be; a head restart or a log too big to read do the same), the task reads
``manifest.json`` from storage, waiting in the worker and in the triggerer alike."""

from __future__ import annotations

from ray_train_helpers import run_dag, states, xcom

from airflow_ray_train.hooks import log_follower


def test_a_manifest_the_log_cannot_give_is_read_from_storage_sync_and_deferred(
    ray_conn, airflow_db, tmp_path, monkeypatch, capfd
):
    monkeypatch.setattr(log_follower, "MAX_MANIFEST_CHARS", 40)  # every real manifest line is longer
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__DEFAULT_STORAGE_PATH", str(tmp_path))
    dag_run = run_dag("test_ray_train_deferrable")
    assert states(dag_run) == {"train_sync": "success", "train_deferred": "success"}
    for task in ("train_sync", "train_deferred"):
        result = xcom(dag_run, task)
        assert result["status"] == "SUCCEEDED" and result["metrics"]["epoch"] == 1, result
        assert result["manifest_path"].startswith(str(tmp_path)) and result["checkpoint_path"].startswith(str(tmp_path))
    output = capfd.readouterr()
    assert (output.out + output.err).count("its manifest was read from") >= 2
