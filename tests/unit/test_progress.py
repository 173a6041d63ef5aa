"""The progress line the task log shows at each Ray Train report: fractions, percentages, pace and ETA, resumed
runs, no total, batches of lines, bad values; the operator's ``progress`` argument and the declarative loops'
totals."""

from __future__ import annotations

import json

import pytest

from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.progress import Progress, ProgressSpec, declared_progress, duration
from airflow_ray_train.triggers.ray_train import RayTrainJobTrigger
from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP
from airflow_ray_train_runtime.reports import REPORT_PREFIX
from airflow_ray_train_runtime.transformers import TRANSFORMERS_TRAIN_LOOP

EPOCHS_0_BASED = ProgressSpec(key="epoch", total=10, first=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(number: int, **metrics: object) -> str:
    """A report line as the job log has it: forwarded by Ray from the Train controller."""
    shown = " ".join(f"{k}={v}" for k, v in metrics.items())
    return f"(TrainController pid=7) {REPORT_PREFIX} {number}: {shown} checkpoint=/tmp/run/checkpoint_{number}"


def test_each_report_shows_the_fraction_the_pace_and_the_eta():
    clock = Clock()
    progress = Progress(EPOCHS_0_BASED, clock)
    lines = []
    for number, epoch in enumerate(range(10), 1):
        clock.now += 41
        lines.append(progress.update([report(number, loss=0.5, epoch=epoch)]))
    assert lines[0] == "[progress] epoch 1/10 (10%) · 41 s elapsed"  # one report: no pace yet
    assert lines[2] == "[progress] epoch 3/10 (30%) · 41 s/epoch · ETA 4 min 47 s"
    assert lines[-1] == "[progress] epoch 10/10 (100%) · 41 s/epoch"  # done: no ETA


def test_a_count_of_units_done_is_the_default():
    clock = Clock()
    progress = Progress(ProgressSpec.from_argument({"key": "step", "total": 300}), clock)
    clock.now += 5
    assert progress.update([report(1, step=100)]) == "[progress] step 100/300 (33%) · 5 s elapsed"
    clock.now += 50
    assert progress.update([report(2, step=200)]) == "[progress] step 200/300 (66%) · 0.5 s/step · ETA 50 s"


def test_the_eta_follows_the_recent_pace_not_the_average():
    clock = Clock()
    progress = Progress(ProgressSpec("epoch", 20), clock)
    for number in range(1, 11):  # ten slow epochs, then four fast ones
        clock.now += 100
        progress.update([report(number, epoch=number)])
    for number in range(11, 15):
        clock.now += 10
        line = progress.update([report(number, epoch=number)])
    assert line == "[progress] epoch 14/20 (70%) · 10 s/epoch · ETA 1 min"


def test_a_resumed_run_counts_from_where_it_resumed_and_paces_only_this_jobs_units():
    clock = Clock()
    progress = Progress(EPOCHS_0_BASED, clock)
    clock.now += 30  # start-up, then the first epoch this job trains: epoch index 4, the 5th epoch
    first = progress.update([report(1, epoch=4, start_epoch=4)])
    assert first == "[progress] epoch 5/10 (50%) · 30 s elapsed"
    clock.now += 20
    # Paced by this job's one epoch in 20 s, not by 30 s over six epochs (or 50 s over two).
    assert (
        progress.update([report(2, epoch=5, start_epoch=4)])
        == "[progress] epoch 6/10 (60%) · 20 s/epoch · ETA 1 min 20 s"
    )


def test_a_worker_group_restarted_from_an_earlier_checkpoint_paces_again():
    clock = Clock()
    progress = Progress(EPOCHS_0_BASED, clock)
    for number, epoch in enumerate((0, 1, 2), 1):
        clock.now += 10
        progress.update([report(number, epoch=epoch)])
    # A worker died; the group restarted from the only checkpoint, epoch index 0's, and trained index 1 again.
    clock.now += 60
    restarted = progress.update([report(4, epoch=1)])
    assert restarted == "[progress] epoch 2/10 (20%) · restarted from a checkpoint after epoch 1 · 1 min 30 s elapsed"
    clock.now += 12
    assert progress.update([report(5, epoch=2)]) == "[progress] epoch 3/10 (30%) · 12 s/epoch · ETA 1 min 24 s"


def test_without_a_total_the_line_shows_the_report_number_and_the_time_elapsed():
    clock = Clock()
    progress = Progress(None, clock)
    clock.now += 190
    assert progress.update([report(4, loss=0.1)]) == "[progress] report 4 · 3 min 10 s elapsed"
    assert Progress.from_argument(None, clock).update([report(1, loss=0.1)]) == "[progress] report 1 · 0 s elapsed"


def test_lines_without_a_report_give_no_progress():
    progress = Progress(EPOCHS_0_BASED, Clock())
    assert progress.update([]) is None
    assert progress.update(["(RayTrainWorker pid=8) epoch 3 loss 0.2", "[airflow-ray-train] manifest ..."]) is None
    assert progress.update([f"{REPORT_PREFIX} one: epoch=3"]) is None  # not a report line the driver prints


def test_a_batch_is_timed_once_at_its_last_report():
    clock = Clock()
    progress = Progress(ProgressSpec("epoch", 10), clock)
    clock.now += 10
    progress.update([report(1, epoch=1)])
    clock.now += 30  # a polled log: three epochs' reports arrive together, 10 s apart when they were printed
    batch = progress.update(["some output", report(2, epoch=2), report(3, epoch=3), report(4, epoch=4), "more"])
    assert batch == "[progress] epoch 4/10 (40%) · 10 s/epoch · ETA 1 min"


def test_a_first_batch_of_several_reports_is_a_backlog_whose_times_are_unknown():
    clock = Clock()
    progress = Progress(ProgressSpec("epoch", 10), clock)
    clock.now += 600  # a restarted triggerer reads the log from its start: six reports at once
    backlog = progress.update([report(n, epoch=n) for n in range(1, 7)])
    assert backlog == "[progress] epoch 6/10 (60%) · 10 min elapsed"
    clock.now += 40  # the next report is timed, but one timed report gives no pace yet
    assert progress.update([report(7, epoch=7)]) == "[progress] epoch 7/10 (70%) · 10 min 40 s elapsed"
    clock.now += 40
    assert progress.update([report(8, epoch=8)]) == "[progress] epoch 8/10 (80%) · 40 s/epoch · ETA 1 min 20 s"


@pytest.mark.parametrize("value", ["None", "nan", "inf", "True", "abc", "{'a':", "-3"])
def test_a_report_without_a_usable_value_says_so_and_keeps_the_pace(value):
    clock = Clock()
    progress = Progress(ProgressSpec("epoch", 10), clock)
    clock.now += 10
    progress.update([report(1, epoch=1)])
    clock.now += 10
    assert progress.update([report(2, epoch=value)]) == "[progress] report 2 (no number under 'epoch') · 20 s elapsed"
    clock.now += 10
    assert progress.update([report(3, epoch=3)]) == "[progress] epoch 3/10 (30%) · 10 s/epoch · ETA 1 min 10 s"


def test_the_key_is_matched_whole_and_fractional_epochs_show_as_such():
    clock = Clock()
    progress = Progress(ProgressSpec("epoch", 3.0), clock)
    clock.now += 10
    line = progress.update([report(1, train_epoch=9, epoch=0.5333, step=16)])
    assert line == "[progress] epoch 0.53/3 (17%) · 10 s elapsed"
    missing = Progress(ProgressSpec("epoch", 3), clock).update([report(1, val_epoch=2)])
    assert missing == "[progress] report 1 (no number under 'epoch') · 0 s elapsed"


def test_a_count_past_the_total_is_shown_as_it_is():
    progress = Progress(ProgressSpec("epoch", 2), Clock())
    assert progress.update([report(1, epoch=3)]).startswith("[progress] epoch 3/2 (150%)")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0 s"),
        (0.004, "0 s"),
        (0.42, "0.42 s"),
        (4.7, "4.7 s"),
        (9.99, "10 s"),
        (41, "41 s"),
        (59.6, "1 min"),
        (287, "4 min 47 s"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
        (86400 * 3 + 3600 * 4, "3 d 4 h"),
        (86400 * 2, "2 d"),
        (-5, "0 s"),
    ],
)
def test_durations_read_as_a_person_says_them(seconds, shown):
    assert duration(seconds) == shown


@pytest.mark.parametrize(
    ("argument", "field", "fix"),
    [
        ("epoch", "progress", "pass a dict"),
        ({"key": "epoch"}, "progress.total", "positive number"),
        ({"key": "epoch", "total": 0}, "progress.total", "positive number"),
        ({"key": "epoch", "total": "10"}, "progress.total", "positive number"),
        ({"key": "epoch", "total": True}, "progress.total", "positive number"),
        ({"key": "epoch", "total": float("inf")}, "progress.total", "positive number"),
        ({"total": 10}, "progress.key", "name the report metric"),
        ({"key": "my epoch", "total": 10}, "progress.key", "without spaces"),
        ({"key": "a=b", "total": 10}, "progress.key", "without spaces"),
        ({"key": "epoch", "total": 10, "first": "0"}, "progress.first", "0-based index"),
        ({"key": "epoch", "totl": 10}, "progress.totl", "'key', 'total' and 'first'"),
    ],
)
def test_a_bad_progress_argument_fails_the_operator_naming_the_field_and_the_fix(argument, field, fix):
    with pytest.raises(RayTrainConfigError) as raised:
        RayTrainOperator(task_id="t", train_func="pkg.mod:train", progress=argument)
    assert raised.value.field == field and fix in str(raised.value)


def test_the_progress_argument_reaches_the_trigger_as_json():
    operator = RayTrainOperator(task_id="t", train_func="pkg.mod:train", progress={"key": "epoch", "total": 10})
    spec = operator.progress_spec()
    assert spec == ProgressSpec("epoch", 10, 1)
    trigger = RayTrainJobTrigger(job_id="j", progress=spec.to_json())
    _, kwargs = trigger.serialize()
    assert json.loads(json.dumps(kwargs))["progress"] == {"key": "epoch", "total": 10, "first": 1}
    again = RayTrainJobTrigger(**kwargs)
    assert again._progress.spec == spec


def test_the_argument_wins_over_a_declarative_loops_total():
    operator = RayTrainOperator(
        task_id="t",
        train_func=LIGHTNING_TRAIN_LOOP,
        train_loop_config={"module": "m:M", "trainer_kwargs": {"max_epochs": 4}},
        progress={"key": "step", "total": 400},
    )
    assert operator.progress_spec() == ProgressSpec("step", 400)
    operator.progress = None
    assert operator.progress_spec() == ProgressSpec("epoch", 4, first=0)


@pytest.mark.parametrize(
    ("train_func", "config", "expected"),
    [
        (LIGHTNING_TRAIN_LOOP, {"trainer_kwargs": {"max_epochs": 5}}, ProgressSpec("epoch", 5, first=0)),
        (LIGHTNING_TRAIN_LOOP, {"trainer_kwargs": {"max_steps": 200}}, ProgressSpec("step", 200)),
        (LIGHTNING_TRAIN_LOOP, {"trainer_kwargs": {"max_epochs": -1, "max_steps": 50}}, ProgressSpec("step", 50)),
        (LIGHTNING_TRAIN_LOOP, {"trainer_kwargs": {}}, None),
        (LIGHTNING_TRAIN_LOOP, {"trainer_kwargs": "max_epochs=5"}, None),
        (TRANSFORMERS_TRAIN_LOOP, {"training_args": {"num_train_epochs": 2}}, ProgressSpec("epoch", 2)),
        (
            TRANSFORMERS_TRAIN_LOOP,
            {"training_args": {"max_steps": 30, "num_train_epochs": 2}},
            ProgressSpec("step", 30),
        ),
        (TRANSFORMERS_TRAIN_LOOP, {}, ProgressSpec("epoch", 3.0)),  # TrainingArguments' default
        ("pkg.mod:train", {"trainer_kwargs": {"max_epochs": 5}}, None),
        (LIGHTNING_TRAIN_LOOP, None, None),
    ],
)
def test_the_declarative_loops_know_their_total(train_func, config, expected):
    assert declared_progress(train_func, config) == expected
