"""TrainSpec / ResultManifest: the seam's round-trips and its rejections, each naming the field and the fix."""

from __future__ import annotations

import json

import pytest

from airflow_ray_train_runtime.spec import (
    MANIFEST_MARKER,
    SCHEMA_VERSION,
    CheckpointRecord,
    ResultManifest,
    SpecError,
    TrainSpec,
    manifest_from_log,
)


def _spec(**overrides):
    fields = {
        "train_func": "my_models.digits:train_func",
        "run_name": "dag.train.run-1-abc",
        "submission_id": "airflow-dag.train.run-1-abc-try1",
        "train_loop_config": {"lr": 1e-3, "epochs": 5, "layers": [64, 32], "opt": {"name": "adam"}},
        "scaling_config": {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
        "run_config": {
            "storage_path": "/shared/ray_results",
            "checkpoint_config": {
                "num_to_keep": 2,
                "checkpoint_score_attribute": "acc",
                "checkpoint_score_order": "max",
            },
            "failure_config": {"max_failures": 1},
        },
    }
    fields.update(overrides)
    return TrainSpec(**fields)


def _manifest(**overrides):
    fields = {
        "status": "SUCCEEDED",
        "submission_id": "s-try1",
        "run_name": "r",
        "run_path": "s3://bucket/runs/r",
        "manifest_path": "s3://bucket/runs/r/airflow_ray_train/s-try1/manifest.json",
        "checkpoint_path": "s3://bucket/runs/r/checkpoint_2",
        "best_checkpoint_path": "s3://bucket/runs/r/checkpoint_1",
        "best_checkpoints": [CheckpointRecord("s3://bucket/runs/r/checkpoint_1", {"acc": 0.9})],
        "metrics": {"acc": 0.8, "epoch": 2},
        "num_reports": 3,
    }
    fields.update(overrides)
    return ResultManifest(**fields)


def test_train_spec_round_trips_through_json_and_the_command_line_argument():
    spec = _spec()
    assert TrainSpec.from_json(spec.to_json()) == spec
    arg = spec.to_arg()
    assert arg.startswith("b64:") and " " not in arg and "'" not in arg
    assert TrainSpec.from_arg(arg) == spec
    assert TrainSpec.from_arg(spec.to_json()) == spec
    assert json.loads(spec.to_json())["schema_version"] == SCHEMA_VERSION


def test_train_spec_from_a_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(_spec().to_json())
    assert TrainSpec.from_arg(str(path)) == _spec()


def test_effective_run_name_puts_the_users_run_config_name_before_the_series_name():
    assert _spec().effective_run_name == "dag.train.run-1-abc"
    assert _spec(run_config={"name": "nightly"}).effective_run_name == "nightly.dag.train.run-1-abc"


@pytest.mark.parametrize(
    ("overrides", "field", "fix"),
    [
        ({"train_func": "my_models.digits.train_func"}, "train_func", "'package.module:function'"),
        ({"train_func": "my models:train"}, "train_func", "'package.module:function'"),
        ({"scaling_config": {"num_wokers": 2}}, "scaling_config.num_wokers", "did you mean 'num_workers'"),
        ({"scaling_config": {"trainer_resources": {"CPU": 1}}}, "scaling_config.trainer_resources", "use one of"),
        ({"scaling_config": {"num_workers": "2"}}, "scaling_config.num_workers", "pass a int"),
        ({"scaling_config": {"num_workers": True}}, "scaling_config.num_workers", "pass a int"),
        ({"scaling_config": {"num_workers": 0}}, "scaling_config.num_workers", "1 or more"),
        ({"scaling_config": {"placement_strategy": "pack"}}, "scaling_config.placement_strategy", "PACK"),
        (
            {"scaling_config": {"resources_per_worker": {"GPU": -1}}},
            "scaling_config.resources_per_worker['GPU']",
            ">= 0",
        ),
        ({"run_config": {"storage_path": "results"}}, "run_config.storage_path", "absolute path"),
        ({"run_config": {"sync_config": {}}}, "run_config.sync_config", "use one of"),
        (
            {"run_config": {"checkpoint_config": {"num_to_kep": 2}}},
            "run_config.checkpoint_config.num_to_kep",
            "num_to_keep",
        ),
        (
            {"run_config": {"checkpoint_config": {"num_to_keep": 0}}},
            "run_config.checkpoint_config.num_to_keep",
            "1 or more",
        ),
        (
            {"run_config": {"checkpoint_config": {"checkpoint_score_order": "up"}}},
            "run_config.checkpoint_config.checkpoint_score_order",
            "'max' or 'min'",
        ),
        ({"run_config": {"failure_config": {"max_failures": -2}}}, "run_config.failure_config.max_failures", "-1"),
        ({"run_config": {"failure_config": {"fail_fast": True}}}, "run_config.failure_config.fail_fast", "use one of"),
        ({"run_config": {"name": "my run"}}, "run_config.name", "letters, digits"),
        ({"train_loop_config": {"lr": float("nan")}}, "train_loop_config['lr']", "finite number"),
        (
            {"train_loop_config": {"model": object()}},
            "train_loop_config['model']",
            "build the object inside train_func",
        ),
        ({"train_loop_config": {"layers": [1, {2}]}}, "train_loop_config['layers'][1]", "plain numbers"),
        ({"train_loop_config": [1, 2]}, "train_loop_config", "pass a dict"),
        ({"run_name": "../escape"}, "run_name", "letters, digits"),
    ],
)
def test_bad_spec_values_name_the_field_and_the_fix(overrides, field, fix):
    with pytest.raises(SpecError) as raised:
        _spec(**overrides)
    assert raised.value.field == field
    assert field in str(raised.value) and fix in str(raised.value)


def test_spec_documents_reject_unknown_keys_and_other_versions():
    data = _spec().to_dict()
    with pytest.raises(SpecError, match="train_fn is not a TrainSpec field"):
        TrainSpec.from_dict({**data, "train_fn": "x:y"})
    with pytest.raises(SpecError, match="schema_version is 2"):
        TrainSpec.from_dict({**data, "schema_version": 2})
    with pytest.raises(SpecError, match="train_func is missing"):
        TrainSpec.from_dict({k: v for k, v in data.items() if k != "train_func"})
    with pytest.raises(SpecError, match="not valid JSON"):
        TrainSpec.from_json("{not json")


def test_manifest_round_trips_and_keeps_remote_schemes():
    manifest = _manifest()
    again = ResultManifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.checkpoint_path == "s3://bucket/runs/r/checkpoint_2"
    assert again.best_checkpoints == [CheckpointRecord("s3://bucket/runs/r/checkpoint_1", {"acc": 0.9})]
    assert again.succeeded


def test_failed_manifest_carries_the_error():
    error = {"type": "RuntimeError", "message": "boom", "traceback": "Traceback..."}
    manifest = _manifest(status="FAILED", error=error)
    assert ResultManifest.from_json(manifest.to_json()).error == error
    assert not manifest.succeeded


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"status": "DONE"}, "status is 'DONE'"),
        ({"error": {"type": "X", "message": "m", "traceback": ""}}, "error is set on a SUCCEEDED manifest"),
        ({"status": "FAILED", "error": {"type": "X", "msg": "m"}}, "error.msg is not a error field"),
        ({"metrics": {"loss": float("inf")}}, "metrics['loss'] is inf"),
    ],
)
def test_bad_manifests_are_rejected(overrides, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _manifest(**overrides)


def test_manifest_is_found_in_a_job_log_and_the_last_one_wins():
    first, last = _manifest(num_reports=1), _manifest(num_reports=5)
    log = f"starting\n{MANIFEST_MARKER}{first.to_json()}\nmore\n{MANIFEST_MARKER}{last.to_json()}\nbye\n"
    assert manifest_from_log(log) == last
    assert manifest_from_log("no manifest here\n") is None
