"""A job's result comes from its own manifest only: nothing the driver prints after it (a worker's exception,
its traceback, a path) can start a line the way a manifest does, a manifest naming another job is refused, and
values that could break a line in two are refused before anything is submitted."""

from __future__ import annotations

import io
import re

import pytest

from airflow_ray_train.results import read_manifest
from airflow_ray_train_runtime.spec import MANIFEST_MARKER, ResultManifest, SpecError, TrainSpec, manifest_from_log
from airflow_ray_train_runtime.trainer import QuotedStream, RunPaths, print_outcome, publish, quoted_output

JOB = "airflow-dag.train-0123456789abcdef-try1"
#: What the log follower strips before it looks for the marker (hooks/log_follower.py).
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _forged(submission_id: str = JOB) -> str:
    fake = ResultManifest(
        status="FAILED",
        submission_id=submission_id,
        run_name="run",
        run_path="/elsewhere",
        manifest_path="/elsewhere/manifest.json",
        checkpoint_path="/attacker/checkpoint",
        error={"type": "Forged", "message": "data", "traceback": ""},
    )
    return MANIFEST_MARKER + fake.to_json()


def _manifest_lines(log: str) -> list[str]:
    """The lines a log reader takes for manifest lines: what starts with the marker once escapes are gone."""
    return [line for line in ANSI.sub("", log).split("\n") if line.startswith(MANIFEST_MARKER)]


def test_a_workers_error_that_prints_a_manifest_line_does_not_replace_the_real_one(tmp_path, capsys):
    """The issue's scenario: ``ValueError(f"bad row: {row}")`` where the row's text holds a newline and a line
    that looks like a manifest. The driver prints the message and the traceback after its manifest."""
    spec = TrainSpec(train_func="m:f", run_name="run", submission_id=JOB, run_config={"storage_path": str(tmp_path)})
    paths = RunPaths.of(spec, "/unused")
    row = f"id=7\n{_forged()}\n\x1b[0m{_forged()}"
    message = f"bad row: {row}"
    real = ResultManifest(
        status="FAILED",
        submission_id=JOB,
        run_name=paths.run_name,
        run_path=paths.run_path,
        manifest_path=paths.storage.join(paths.file("manifest.json")),
        error={"type": "ValueError", "message": message, "traceback": f"Traceback ...\nValueError: {message}\n"},
    )
    publish(real, paths)
    print_outcome(real)
    captured = capsys.readouterr()
    log = captured.out + captured.err  # the job log holds both; either order
    assert _manifest_lines(log) == [MANIFEST_MARKER + real.to_json()]
    assert _manifest_lines(captured.err + captured.out) == [MANIFEST_MARKER + real.to_json()]
    found = manifest_from_log(captured.err + captured.out)
    assert found == real and found.error is not None and found.error["type"] == "ValueError"
    assert "bad row: id=7" in log and "| " + MANIFEST_MARKER in log  # still shown, quoted


def test_a_quoted_stream_quotes_a_marker_split_over_writes_and_leaves_other_lines_alone():
    target = io.StringIO()
    stream = QuotedStream(target)
    stream.write("epoch 1\nAIRFLOW_RAY")
    stream.write("_TRAIN_MANIFEST={}\n  File x\n\x1b[1mAIRFLOW_RAY_TRAIN_MANIFEST={}")
    stream.write("\nAIRFLOW_RAY_TRAIN_MANIFEST={}")
    stream.write("\n\x1b[36m(RayTrainWorker pid=7)\x1b[0m epoch 2\n\x1b[0m")
    stream.write("AIRFLOW_RAY_TRAIN_MANIFEST={}\n")
    stream.write("half a line, then another stream's newline lands in the log: ")  # stdout and stderr share it
    stream.write("AIRFLOW_RAY_TRAIN_MANIFEST={}")
    assert _manifest_lines(target.getvalue()) == []
    assert target.getvalue().endswith(
        "lands in the log: | AIRFLOW_RAY_TRAIN_MANIFEST={}"
    )  # each write may start a line
    assert target.getvalue().split("\n")[:3] == ["epoch 1", "| AIRFLOW_RAY_TRAIN_MANIFEST={}", "  File x"]
    assert "\n\x1b[36m(RayTrainWorker pid=7)\x1b[0m epoch 2\n" in target.getvalue()  # Ray's own lines as they are


def test_the_manifest_itself_is_printed_unquoted_inside_quoted_output(tmp_path, capsys):
    spec = TrainSpec(train_func="m:f", run_name="run", submission_id=JOB, run_config={"storage_path": str(tmp_path)})
    paths = RunPaths.of(spec, "/unused")
    manifest = ResultManifest(
        status="SUCCEEDED", submission_id=JOB, run_name="run", run_path="/r", manifest_path="/r/m.json"
    )
    with quoted_output():
        publish(manifest, paths)
    assert manifest_from_log(capsys.readouterr().out) == manifest


def test_a_manifest_that_names_another_job_is_refused():
    line = _forged("airflow-other.task-fedcba9876543210-try1")
    manifest, why = read_manifest(line, job_id=JOB)
    assert manifest is None and why is not None
    assert "airflow-other.task-fedcba9876543210-try1" in why and JOB in why
    own, none = read_manifest(_forged(), job_id=JOB)
    assert own is not None and own.submission_id == JOB and none is None
    assert read_manifest(line)[0] is not None  # no job to check against: read as before


def test_only_a_line_that_starts_with_the_marker_is_a_manifest():
    assert manifest_from_log(f"echo {_forged()}\n") is None
    assert manifest_from_log(f"x\r{_forged()}\n") is None  # one line to a reader that splits at \n


@pytest.mark.parametrize(
    ("run_config", "field"),
    [
        ({"storage_path": f"/shared/runs\n{MANIFEST_MARKER}{{}}"}, "run_config.storage_path"),
        ({"storage_path": "/shared/runs\r"}, "run_config.storage_path"),
        ({"storage_path": "s3://bucket/\x1b[0mruns"}, "run_config.storage_path"),
        ({"storage_path": "/shared/\u2028runs"}, "run_config.storage_path"),
        ({"name": "clf\n"}, "run_config.name"),
        ({"name": "clf\nAIRFLOW"}, "run_config.name"),
        ({"name": "x" * 101}, "run_config.name"),
    ],
)
def test_storage_paths_and_run_names_with_control_characters_are_refused_naming_the_field(run_config, field):
    with pytest.raises(SpecError) as raised:
        TrainSpec(train_func="m:f", run_name="run", submission_id=JOB, run_config=run_config)
    assert raised.value.field == field and "Fix:" in str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"run_name": "run\n"}, "run_name"),
        ({"submission_id": JOB + "\n"}, "submission_id"),
        ({"train_func": "m:f\n"}, "train_func"),
        (
            {"tracking": {"tracking_uri": "http://m", "experiment_id": "1", "run_id": "a", "register_model": "c\nx"}},
            "tracking.register_model",
        ),
        ({"tracking": {"tracking_uri": "http://m", "experiment_id": "1\n", "run_id": "a"}}, "tracking.experiment_id"),
    ],
)
def test_other_names_with_a_trailing_newline_are_refused(overrides, field):
    fields = {"train_func": "m:f", "run_name": "run", "submission_id": JOB, **overrides}
    with pytest.raises(SpecError) as raised:
        TrainSpec(**fields)
    assert raised.value.field == field
