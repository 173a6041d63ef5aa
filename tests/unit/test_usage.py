"""Usage from what Ray Train said: worker groups (their start, end, workers and each worker's reservation) and
the Train run's time on the cluster side; the job's wall time and the driver's share from the Jobs API on the
Airflow side; summed over the jobs that trained one Train run."""

from __future__ import annotations

from airflow_ray_train.hooks.jobs_api import JobInfo
from airflow_ray_train.usage import task_usage, usage_metrics, usage_sentence
from airflow_ray_train_runtime.usage import series_usage, try_usage, worker_groups


def start(t, *workers):
    return {"event": "start", "time": t, "workers": [{"resources": r, "node_id": n} for n, r in workers]}


def test_each_worker_group_counts_its_own_workers_reservations_for_the_time_it_held_them():
    events = [
        start(100.0, ("a", {"CPU": 2.0}), ("b", {"CPU": 2.0, "GPU": 1.0})),
        {"event": "end", "time": 110.0},
        start(115.0, ("a", {"CPU": 2.0})),  # a smaller group after a node was lost
        {"event": "end", "time": 125.0},
    ]
    usage = try_usage(events, 99.0, 126.0, {"num_workers": 2}, "job-1")
    assert usage["train_run_s"] == 27.0
    assert [(g["workers"], g["start"], g["end"], g["nodes"]) for g in usage["worker_groups"]] == [
        (2, 100.0, 110.0, 2),
        (1, 115.0, 125.0, 1),
    ]
    assert usage["worker_s"] == 2 * 10 + 1 * 10
    assert usage["cpu_s"] == 4 * 10 + 2 * 10 and usage["gpu_s"] == 1 * 10
    assert usage["accelerator_type"] is None


def test_a_group_still_open_when_the_run_ended_ends_with_it():
    groups = worker_groups([start(10.0, ("a", {"CPU": 1.0}))], run_end=30.0)
    assert (groups[0]["start"], groups[0]["end"]) == (10.0, 30.0)
    assert try_usage([], None, 5.0, {}, "j")["train_run_s"] == 0.0  # fit() never started


def test_the_accelerator_type_comes_from_the_scaling_config_or_the_reservation():
    gpu = [start(0.0, ("a", {"GPU": 1.0, "accelerator_type:A100": 0.001}))]
    assert try_usage(gpu, 0.0, 1.0, {}, "j")["accelerator_type"] == "A100"
    assert try_usage(gpu, 0.0, 1.0, {"accelerator_type": "H100"}, "j")["accelerator_type"] == "H100"


def test_a_series_sums_its_jobs():
    first = try_usage([start(0.0, ("a", {"CPU": 1.0})), {"event": "end", "time": 10.0}], 0.0, 10.0, {}, "try1")
    second = try_usage([start(20.0, ("a", {"CPU": 1.0})), {"event": "end", "time": 25.0}], 19.0, 26.0, {}, "try2")
    series = series_usage([first, second])
    assert series == {"jobs": ["try1", "try2"], "train_run_s": 17.0, "worker_s": 15.0, "cpu_s": 15.0, "gpu_s": 0.0}


def test_the_airflow_side_adds_the_jobs_wall_times_and_the_drivers_share():
    this = try_usage([start(0.0, ("a", {"CPU": 1.0})), {"event": "end", "time": 10.0}], 0.0, 10.0, {}, "try2")
    manifest_usage = {"try": this, "series": series_usage([{"submission_id": "try1", "cpu_s": 5.0}, this])}
    info = JobInfo("try2", "SUCCEEDED", start_time=1_000, end_time=13_000, entrypoint_num_cpus=0.5)
    earlier = {"try1": JobInfo("try1", "FAILED", start_time=0, end_time=8_000, entrypoint_num_cpus=0.5)}
    usage = task_usage(manifest_usage, info, earlier.get)
    assert usage["job_s"] == 12.0 and usage["driver_cpu_s"] == 6.0 and usage["cpu_s"] == 10.0
    assert usage["series"]["job_s"] == 20.0 and usage["series"]["driver_cpu_s"] == 10.0
    assert usage["series"]["cpu_s"] == 15.0 and usage["series"]["jobs_timed"] == 2
    # A job the cluster no longer has is left out of the wall time, and said so.
    assert task_usage(manifest_usage, info, lambda _: None)["series"]["jobs_timed"] == 1
    assert usage_metrics(usage)["usage_series_cpu_s"] == 15.0 and usage_metrics(usage)["usage_job_s"] == 12.0
    sentence = usage_sentence(usage)
    assert sentence.startswith("Usage: job 12 s, Train run 10 s with 1 workers x {'CPU': 1.0}: 10 CPU-seconds")
    assert "Over the 2 jobs of this Train run: Train 10 s, 15 CPU-seconds" in sentence
    assert task_usage({}, info, earlier.get) == {}
