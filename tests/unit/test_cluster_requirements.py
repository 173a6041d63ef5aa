"""Which clusters the runtime accepts (``runtime.cluster_support``): the reasons it gives, without a cluster."""

from __future__ import annotations

import pytest

from airflow_ray_train_runtime.cluster_support import MIN_RAY_VERSION, cluster_problem, version_tuple

OLDEST = ".".join(map(str, MIN_RAY_VERSION))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.52.1", (2, 52, 1)), ("2.60.0rc1", (2, 60, 0)), ("3.0.0.dev0", (3, 0, 0)), ("nightly", ())],
)
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


@pytest.mark.parametrize("ray_version", [OLDEST + ".0", "2.60.0", "3.1.0"])
def test_a_supported_ray_with_train_v2_and_torch_passes(ray_version):
    assert cluster_problem(ray_version, "3.12.1", train_v2=True, has_torch=True) is None


@pytest.mark.parametrize("ray_version", ["2.40.0", f"{MIN_RAY_VERSION[0]}.{MIN_RAY_VERSION[1] - 1}.2", "nightly"])
def test_an_older_ray_is_named_with_the_oldest_supported(ray_version):
    problem = cluster_problem(ray_version, "3.11.7", train_v2=True, has_torch=True)
    assert problem is not None
    assert f"Ray {ray_version} on Python 3.11.7" in problem and f"needs Ray {OLDEST} or newer" in problem
    assert f"ray[train]>={OLDEST}" in problem


def test_train_v1_is_named_with_the_switch_to_turn_v2_on():
    problem = cluster_problem("2.56.1", "3.11.7", train_v2=False, has_torch=True)
    assert problem is not None and "RAY_TRAIN_V2_ENABLED=0" in problem and "Fix: unset RAY_TRAIN_V2_ENABLED" in problem


def test_a_cluster_without_torch_is_told_to_install_it():
    problem = cluster_problem("2.60.0", "3.12.1", train_v2=True, has_torch=False)
    assert problem is not None and "Ray 2.60.0 on Python 3.12.1 without torch" in problem and "install torch" in problem
