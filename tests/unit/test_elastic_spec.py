"""Elastic training's spec: ``num_workers`` as ``[min, max]`` is checked before anything is submitted, reaches
Ray Train as the tuple, is refused with the versions and the fix on a Ray without elastic training, and the
resource pre-check refuses only a minimum that can never fit."""

from __future__ import annotations

import pytest

from airflow_ray_train.hooks.resources import cluster_shortfall
from airflow_ray_train_runtime.cluster_support import elastic_problem
from airflow_ray_train_runtime.spec import SpecError, TrainSpec


def spec(**scaling):
    return TrainSpec(train_func="pkg.mod:f", run_name="r", submission_id="s", scaling_config=scaling)


def test_a_range_of_workers_is_elastic_and_a_number_is_not():
    elastic = spec(num_workers=[1, 4], elastic_resize_monitor_interval_s=10)
    assert elastic.elastic and elastic.worker_range == (1, 4)
    fixed = spec(num_workers=2)
    assert not fixed.elastic and fixed.worker_range == (2, 2)
    assert spec().worker_range == (1, 1)


@pytest.mark.parametrize("bad", [[0, 2], [3, 2], [1], [1, 2, 3], [1.0, 2], [True, 2], ["1", "2"]])
def test_a_bad_range_is_refused_naming_the_field_and_the_fix(bad):
    with pytest.raises(SpecError, match=r"scaling_config\.num_workers is .*1 <= min <= max") as info:
        spec(num_workers=bad)
    assert info.value.field == "scaling_config.num_workers"


def test_a_resize_interval_without_a_range_is_refused():
    with pytest.raises(SpecError, match=r"elastic_resize_monitor_interval_s is set while num_workers is 2"):
        spec(num_workers=2, elastic_resize_monitor_interval_s=10)


def test_a_ray_without_elastic_training_is_named_with_the_fix():
    assert elastic_problem("2.60.0", True, [1, 2]) is None
    problem = elastic_problem("2.52.1", False, [1, 2])
    assert problem is not None and "runs Ray 2.52.1" in problem and "Fix: give a fixed number" in problem
    assert "num_workers=2" in problem


def test_the_pre_check_refuses_only_a_minimum_that_can_never_fit():
    nodes = [{"node_id": "a", "resources": {"CPU": 2.0}}, {"node_id": "b", "resources": {"CPU": 1.0}}]
    assert cluster_shortfall(nodes, {"num_workers": [2, 8]}) is None  # the minimum fits: it starts
    assert "can never hold more than 3" in (cluster_shortfall(nodes, {"num_workers": [4, 8]}) or "")
    # What the operator warns about: the maximum that never fits.
    assert "asks for 8 workers" in (cluster_shortfall(nodes, {"num_workers": [2, 8]}, workers=8) or "")
