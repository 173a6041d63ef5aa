"""A finished job's result read from ``manifest.json`` in storage when its log cannot give it, bound to the job;
and the result's size cap in XCom."""

from __future__ import annotations

import json

from airflow_ray_train.config import SETTINGS, provider_config, ray_train_setting
from airflow_ray_train.results import XCOM_MAX_BYTES, capped
from airflow_ray_train.stored_manifest import manifest_file, read_stored_manifest
from airflow_ray_train_runtime.spec import ResultManifest
from airflow_ray_train_runtime.storage import Storage


def manifest(submission_id: str, storage: str) -> ResultManifest:
    return ResultManifest(
        status="SUCCEEDED",
        submission_id=submission_id,
        run_name="run",
        run_path=f"{storage}/run",
        manifest_path=f"{storage}/{manifest_file('run', submission_id)}",
        checkpoint_path=f"{storage}/run/checkpoint_000001",
        metrics={"epoch": 1},
    )


def test_the_manifest_the_driver_wrote_is_read_from_storage_for_its_own_job_only(tmp_path):
    storage = Storage(str(tmp_path))
    storage.write_text(manifest_file("run", "job-1"), manifest("job-1", str(tmp_path)).to_json())
    found, where = read_stored_manifest(str(tmp_path), "run", "job-1", embedded=False)
    assert found is not None and found.checkpoint_path.endswith("checkpoint_000001") and where.endswith(".json")
    # A manifest copied under another job's folder is not that job's result.
    storage.write_text(manifest_file("run", "job-2"), manifest("job-1", str(tmp_path)).to_json())
    found, why = read_stored_manifest(str(tmp_path), "run", "job-2", embedded=False)
    assert found is None and "names job 'job-1'" in why
    found, why = read_stored_manifest(str(tmp_path), "run", "job-3", embedded=False)
    assert found is None and "there is no" in why
    # The cluster's default storage is on the cluster: only the embedded head's is on this machine.
    found, why = read_stored_manifest(None, "run", "job-1", embedded=False)
    assert found is None and "cluster's default" in why


def test_a_result_over_the_xcom_cap_keeps_its_paths_and_scalar_metrics_and_says_what_was_cut():
    best = [
        {"path": f"/s/run/checkpoint_{i:06d}", "metrics": {"loss": 0.1, "curve": list(range(2000))}} for i in range(50)
    ]
    result = {
        "checkpoint_path": "/s/run/checkpoint_000049",
        "metrics": {"loss": 0.1, "epoch": 49, "confusion": [[1] * 100] * 100},
        "best_checkpoints": best,
        "metrics_history_path": "/s/run/history.csv",
    }
    cut, note = capped(result)
    assert len(json.dumps(cut)) <= XCOM_MAX_BYTES
    assert cut["checkpoint_path"] == result["checkpoint_path"] and cut["metrics"] == {"loss": 0.1, "epoch": 49}
    assert cut["best_checkpoints"][0] == {"path": "/s/run/checkpoint_000000", "metrics": {"loss": 0.1}}
    assert "/s/run/history.csv" in note
    assert capped({"metrics": {"loss": 0.1}}) == ({"metrics": {"loss": 0.1}}, None)


def test_each_setting_is_declared_once_with_its_default_and_the_provider_info_is_built_from_it(monkeypatch):
    options = provider_config()["ray_train"]["options"]
    assert set(options) == set(SETTINGS)
    assert options["contact_window"]["default"] == "600.0" and ray_train_setting("contact_window") == 600.0
    monkeypatch.setenv("AIRFLOW__RAY_TRAIN__CONTACT_WINDOW", "90")
    assert ray_train_setting("contact_window") == 90.0
