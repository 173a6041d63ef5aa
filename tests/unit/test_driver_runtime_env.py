"""The driver keeps the spec's package (new for every job) out of the runtime_env Train's processes start in."""

from __future__ import annotations

import json

from airflow_ray_train_runtime.spec import TrainSpec
from airflow_ray_train_runtime.trainer import JOB_CONFIG_ENV, keep_spec_package_from_workers

CODE = ["gcs://_ray_pkg_aaaa.zip", "gcs://_ray_pkg_bbbb.zip"]


def _spec() -> TrainSpec:
    return TrainSpec(train_func="m:f", run_name="r", submission_id="job-1")


def _shipped(tmp_path, monkeypatch, folder: str) -> None:
    """A spec file where Ray would unpack its package, that folder on sys.path (as the supervisor sets it)."""
    unpacked = tmp_path / folder
    unpacked.mkdir()
    (unpacked / _spec().shipped_file).write_text(_spec().to_json())
    monkeypatch.syspath_prepend(str(unpacked))


def _config(modules: list[str]) -> dict[str, str]:
    runtime_env = {"py_modules": modules, "env_vars": {"A": "1"}}
    return {JOB_CONFIG_ENV: json.dumps({"runtime_env": runtime_env, "metadata": {"k": "v"}})}


def test_the_spec_package_is_taken_out_and_the_rest_of_the_config_kept(tmp_path, monkeypatch):
    _shipped(tmp_path, monkeypatch, "_ray_pkg_cccc")
    environ = _config([CODE[0], "gcs://_ray_pkg_cccc.zip", CODE[1]])
    assert keep_spec_package_from_workers(_spec(), environ) == "gcs://_ray_pkg_cccc.zip"
    config = json.loads(environ[JOB_CONFIG_ENV])
    assert config == {"runtime_env": {"py_modules": CODE, "env_vars": {"A": "1"}}, "metadata": {"k": "v"}}


def test_a_driver_outside_the_jobs_api_or_with_its_spec_inline_changes_nothing(tmp_path, monkeypatch):
    assert keep_spec_package_from_workers(_spec(), {}) is None  # a plain driver: no job config
    environ = _config(CODE)
    assert keep_spec_package_from_workers(_spec(), environ) is None  # b64 spec: no shipped file on sys.path
    assert environ == _config(CODE)


def test_a_layout_it_does_not_recognise_leaves_the_config_alone(tmp_path, monkeypatch):
    _shipped(tmp_path, monkeypatch, "unpacked_elsewhere")
    environ = _config([*CODE, "gcs://_ray_pkg_cccc.zip"])
    assert keep_spec_package_from_workers(_spec(), environ) is None
    assert environ == _config([*CODE, "gcs://_ray_pkg_cccc.zip"])
