"""@task.ray_train through dag.test() on the real Ray head: the decorated function trains on Ray (shipped
without its DAG file), .expand() runs a sweep as separate Ray jobs and runs, the Ray Job link is set, and a
task defined inside a @dag function trains with what its closure holds."""

from __future__ import annotations

import pytest
from ray_train_helpers import run_dag, states, xcom

from airflow_ray_train.function_shipping import function_package
from airflow_ray_train.hooks.ray_train import RayTrainHook
from airflow_ray_train.links.ray_train import RayJobLink
from airflow_ray_train.packaging import code_package

pytestmark = [pytest.mark.integration]


def test_decorated_function_sweeps_on_ray_and_the_best_is_picked(ray_conn, airflow_db):
    dag_run = run_dag("example_ray_train_taskflow", module="example_ray_train_taskflow")
    assert str(dag_run.state) == "success", states(dag_run)

    runs = [xcom(dag_run, "fit_line", map_index=i) for i in (0, 1)]
    assert [r["metrics"]["lr"] for r in runs] == [0.1, 0.001]  # each mapped task got its own config
    assert len({r["job_id"] for r in runs}) == 2 and len({r["run_path"] for r in runs}) == 2
    for index, result in enumerate(runs):
        assert result["status"] == "SUCCEEDED" and result["metrics"]["epoch"] == 2
        assert xcom(dag_run, "fit_line", RayJobLink().xcom_key, map_index=index) == result["dashboard_url"]
    # lr 0.1 fits y = 3x - 1 (noise 0.1: mse ~0.01); lr 0.001 has barely moved in 3 epochs.
    fast, slow = runs
    assert fast["metrics"]["loss"] < 0.05 < slow["metrics"]["loss"]

    best = xcom(dag_run, "pick_best")
    assert best == {"lr": 0.1, "loss": fast["metrics"]["loss"], "checkpoint_path": fast["checkpoint_path"]}

    # What ran on the cluster was the generated module, not the DAG file: packages are named by their content,
    # so the function's package built again here has the URI the job shipped, and the DAG file's has not.
    from example_ray_train_taskflow import fit_line

    function_module, _, _ = function_package(fit_line.function)
    dag_file = code_package("example_ray_train_taskflow")
    assert dag_file is not None
    py_modules = RayTrainHook().get_job_info(fast["job_id"]).runtime_env["py_modules"]
    assert function_module.uri in py_modules and dag_file.uri not in py_modules, py_modules


def test_a_task_inside_a_dag_function_trains_with_its_closure_on_ray(ray_conn, airflow_db):
    dag_run = run_dag("test_taskflow_dag_function", module="ray_train_shipping_dags")
    assert str(dag_run.state) == "success", states(dag_run)
    result = xcom(dag_run, "fit_closure_line")
    assert result["status"] == "SUCCEEDED" and result["metrics"]["epoch"] == 14
    # The line came from the closure (slope 2.0, intercept 0.5): the model learned it on the cluster.
    assert result["metrics"]["weight"] == pytest.approx(2.0, abs=0.02)
    assert result["metrics"]["bias"] == pytest.approx(0.5, abs=0.02)
    assert result["metrics"]["loss"] < 1e-3
