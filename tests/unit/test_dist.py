"""`make dist`: both distributions build (wheel and sdist, the wheel from the sdist), pass `twine check --strict`,
take their version from the one VERSION file, and hold what they should: their package, `py.typed`, the license,
the provider's entry point; no tests, benchmarks, example DAGs or data. The runtime brings no Airflow."""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = (REPO / "runtime" / "airflow_ray_train_runtime" / "VERSION").read_text().strip()
#: Nothing of these may ship in any of the four files.
NEVER = re.compile(r"(^|/)(tests?|bench|example_dags|docs|docker|gpu|scripts|data|\.venv)/|\.(csv|png|pyc)$")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    outdir = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "dist.py"), "--outdir", str(outdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "PASSED" in done.stderr and "FAILED" not in done.stderr  # twine check --strict, all four
    files = {Path(line).name: Path(line) for line in done.stdout.split()}
    return {
        "provider_wheel": files[f"airflow_ray_train-{VERSION}-py3-none-any.whl"],
        "provider_sdist": files[f"airflow_ray_train-{VERSION}.tar.gz"],
        "runtime_wheel": files[f"airflow_ray_train_runtime-{VERSION}-py3-none-any.whl"],
        "runtime_sdist": files[f"airflow_ray_train_runtime-{VERSION}.tar.gz"],
    }


def wheel_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        return wheel.namelist()


def wheel_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(wheel.read(name))


def sdist_names(path: Path) -> list[str]:
    with tarfile.open(path) as sdist:
        return [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]


def test_the_provider_wheel_holds_the_provider_only_with_its_entry_point(dist):
    names = wheel_names(dist["provider_wheel"])
    assert "airflow_ray_train/operators/ray_train.py" in names and "airflow_ray_train/py.typed" in names
    assert not [n for n in names if n.startswith("airflow_ray_train_runtime/")]  # the runtime's own wheel
    assert not [n for n in names if NEVER.search(n)]
    assert f"airflow_ray_train-{VERSION}.dist-info/licenses/LICENSE" in names
    with zipfile.ZipFile(dist["provider_wheel"]) as wheel:
        entry_points = wheel.read(f"airflow_ray_train-{VERSION}.dist-info/entry_points.txt").decode()
    assert "[apache_airflow_provider]" in entry_points
    assert "provider_info = airflow_ray_train:get_provider_info" in entry_points
    meta = wheel_metadata(dist["provider_wheel"])
    assert meta["Version"] == VERSION and meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist") or []
    # The seam comes from the runtime of the same major.minor: one version, one place.
    major_minor = ".".join(VERSION.split(".")[:2])
    assert f"airflow-ray-train-runtime~={major_minor}.0" in requires
    assert any(r.startswith("apache-airflow>=") for r in requires)


def test_the_runtime_wheel_brings_no_airflow_and_ships_its_version_file(dist):
    names = wheel_names(dist["runtime_wheel"])
    for name in ("__init__.py", "__main__.py", "spec.py", "trainer.py", "VERSION", "py.typed"):
        assert f"airflow_ray_train_runtime/{name}" in names
    assert not [n for n in names if n.startswith("airflow_ray_train/")]
    assert not [n for n in names if NEVER.search(n)]
    assert f"airflow_ray_train_runtime-{VERSION}.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.endswith("entry_points.txt")]
    meta = wheel_metadata(dist["runtime_wheel"])
    assert meta["Version"] == VERSION and meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist") or []
    # Nothing installs without an extra; the `train` extra names Ray Train and torch. Never Airflow.
    assert requires and all('extra == "train"' in r for r in requires), requires
    assert not [r for r in requires if "airflow" in r]


def test_the_sdists_hold_the_sources_and_license_but_no_tests_bench_or_data(dist):
    provider = sdist_names(dist["provider_sdist"])
    assert {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO", "airflow_ray_train/__init__.py"} <= set(provider)
    # The one version file comes along (the wheel is built from the sdist), the runtime's code does not.
    assert "runtime/airflow_ray_train_runtime/VERSION" in provider
    assert not [n for n in provider if n.startswith("runtime/") and n.endswith(".py")]
    runtime = sdist_names(dist["runtime_sdist"])
    assert {"LICENSE", "README.md", "pyproject.toml", "airflow_ray_train_runtime/spec.py"} <= set(runtime)
    assert "airflow_ray_train_runtime/VERSION" in runtime and "airflow_ray_train_runtime/py.typed" in runtime
    for names in (provider, runtime):
        assert not [n for n in names if NEVER.search(n)]


def test_both_licenses_are_the_repositorys():
    assert (REPO / "runtime" / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert "Apache License" in (REPO / "LICENSE").read_text()
