"""The GPU check's kit (gpu/): the wheel repack, the requirement walk, the travelling size, the pins, and the
check's verdict on a run's log and files. The check itself runs with `make gpu-dryrun` (CPU) and on a GPU."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gpu"))

import check  # noqa: E402
import kit  # noqa: E402
from depcheck import Dist, read_names, unmet  # noqa: E402

from airflow_ray_train_runtime.spec import ResultManifest, TrainSpec  # noqa: E402

EXECUTABLE = 0o100755 << 16


def make_wheel(path: Path, name: str, version: str, files: dict[str, bytes], requires: tuple[str, ...] = ()) -> Path:
    """A real (installable) wheel: the files, METADATA, WHEEL and a RECORD listing them all."""
    info = f"{name}-{version}.dist-info"
    metadata = "".join(
        [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", *(f"Requires-Dist: {r}\n" for r in requires)]
    )
    files = {
        **files,
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    wheel = path / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for entry, data in files.items():
            archive.writestr(zipfile.ZipInfo(entry), data)
        record = "".join(f"{entry},,\n" for entry in files) + f"{info}/RECORD,,\n"
        archive.writestr(f"{info}/RECORD", record)
    return wheel


def test_strip_wheel_drops_the_jars_keeps_the_rest_and_pip_installs_it(tmp_path):
    wheel = make_wheel(
        tmp_path, "fakeray", "2.60.0", {"fakeray/__init__.py": b"X = 1\n", "fakeray/jars/ray_dist.jar": b"J" * 4096}
    )
    # An executable (raylet, gcs_server) must stay executable.
    with zipfile.ZipFile(wheel, "a") as archive:
        binary = zipfile.ZipInfo("fakeray/core/raylet")
        binary.external_attr = EXECUTABLE
        archive.writestr(binary, b"\x7fELF")

    assert kit.strip_wheel(wheel, ("fakeray/jars/",)) == 1
    assert kit.strip_wheel(wheel, ("fakeray/jars/",)) == 0  # a second run finds nothing to drop
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        record = archive.read("fakeray-2.60.0.dist-info/RECORD").decode()
        assert archive.read("fakeray/__init__.py") == b"X = 1\n"
    assert not any("jars" in n for n in names) and "fakeray/core/raylet" in names
    assert "jars" not in record and "fakeray/__init__.py" in record

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    assert (target / "fakeray" / "__init__.py").is_file() and not (target / "fakeray" / "jars").exists()
    assert (target / "fakeray" / "core" / "raylet").stat().st_mode & 0o111


TARGET = kit.TARGET_ENVIRONMENT
RAY_METADATA = """Name: ray
Version: 2.60.0
Requires-Dist: click>=7.0
Requires-Dist: aiohttp_cors; extra == "default"
Requires-Dist: py-spy>=0.2.0; python_version < "3.12" and extra == "default"
Requires-Dist: py-spy>=0.4.0; python_version >= "3.12" and extra == "default"
Requires-Dist: tensorboardX>=1.9; extra == "train"
Requires-Dist: memray; extra == "observability"
"""


def lookup_from(dists: dict[str, Dist]):
    return dists.get


def test_the_walk_follows_the_asked_extras_and_this_python_only():
    dists = {
        "ray": Dist("ray", "2.60.0", RAY_METADATA),
        "click": Dist("click"),  # on the device, version unknown: accepted
        "aiohttp-cors": Dist("aiohttp-cors", "0.8.1", "Name: aiohttp-cors\nRequires-Dist: aiohttp>=3.9\n"),
        "aiohttp": Dist("aiohttp", "3.14.5"),
        "py-spy": Dist("py-spy", "0.3.0"),
        "tensorboardx": Dist("tensorboardx", "2.6.5"),
    }
    reached, problems = unmet(["ray[default,train]==2.60.0"], lookup_from(dists), TARGET)
    # memray (another extra) is not needed; py-spy 0.3 meets the <3.12 line but not the 3.12 one.
    assert problems == ['ray needs py-spy>=0.4.0; python_version >= "3.12" and extra == "default": found 0.3.0']
    assert set(reached) == set(dists)

    _, without_extras = unmet(["ray==2.60.0"], lookup_from({"ray": dists["ray"]}), TARGET)
    assert without_extras == ["ray needs click>=7.0: not there"]


def test_the_walk_reports_a_version_the_machine_has_that_a_carried_wheel_refuses():
    dists = {
        "datasets": Dist("datasets", "5.2.0", "Name: datasets\nRequires-Dist: huggingface-hub<3.0,>=1.31.0\n"),
        "huggingface-hub": Dist("huggingface-hub", "1.20.0"),
    }
    _, problems = unmet(["datasets"], lookup_from(dists), TARGET)
    assert problems == ["datasets needs huggingface-hub<3.0,>=1.31.0: found 1.20.0"]


def test_the_pins_are_exact_and_carry_only_what_the_device_lacks():
    pins = read_names(str(kit.PINS))
    device = read_names(str(kit.DEVICE_PACKAGES))
    assert pins["ray"] == "2.60.0"
    assert all(version for version in pins.values()), "every carried wheel is pinned to one version"
    assert not set(pins) & set(device)
    assert {"torch", "transformers", "pytorch-lightning", "accelerate", "scikit-learn", "httpx"} <= set(device)


def test_the_travelling_size_counts_what_git_would_send_and_the_carried_wheels(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text(".whl/\nbuild/\n")
    (repo / "pkg" / "tracked.py").write_bytes(b"t" * 1000)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    (repo / "untracked.txt").write_bytes(b"u" * 300)  # not ignored: it travels
    (repo / "build").mkdir()
    (repo / "build" / "ignored.bin").write_bytes(b"i" * 5000)  # ignored: it stays
    (repo / ".whl").mkdir()
    (repo / ".whl" / "a.whl").write_bytes(b"w" * 7000)  # ignored, but carried

    gitignore = len(".whl/\nbuild/\n")
    assert kit.travelling_bytes(repo, []) == 1000 + 300 + gitignore
    assert kit.travelling_bytes(repo, [repo / ".whl"]) == 1000 + 300 + gitignore + 7000


def write_run(tmp_path: Path, checkpoint_file: str = "model.pt", status: str = "SUCCEEDED") -> tuple[str, str]:
    """The files a run leaves (checkpoint, history, manifest) and its log; returns (log text, checkpoint)."""
    checkpoint = tmp_path / "run" / "checkpoint_1"
    checkpoint.mkdir(parents=True)
    (checkpoint / checkpoint_file).write_bytes(b"weights")
    history = tmp_path / "run" / "history.csv"
    history.write_text("report,val_accuracy\n1,0.9\n")
    manifest = ResultManifest(
        status=status,
        submission_id="s1",
        run_name="run",
        run_path=str(tmp_path / "run"),
        manifest_path=str(tmp_path / "run" / "manifest.json"),
        checkpoint_path=str(checkpoint),
        best_checkpoint_path=str(checkpoint),
        metrics={"val_accuracy": 0.9, "epoch": 2},
        metrics_history_path=str(history),
        num_reports=3,
        error=None if status == "SUCCEEDED" else {"type": "RuntimeError", "message": "boom", "traceback": ""},
    )
    Path(manifest.manifest_path).write_text(manifest.to_json())
    log = (
        "\x1b[36m(RayTrainWorker pid=7)\x1b[0m [pytorch] worker 0/1 trains on cuda:0 (NVIDIA H200)\n"
        f"AIRFLOW_RAY_TRAIN_MANIFEST={manifest.to_json()}\n"
    )
    return log, str(checkpoint)


EXAMPLE = check.Example(
    "pytorch", TrainSpec(train_func="m:f", run_name="run", submission_id="s1"), "model.pt", "val_accuracy", 0.5, 3
)


def verdict(log: str, use_gpu: bool = True, baseline: int = 500, peak: int = 1300, exit_code: int = 0):
    result = check.RunResult("pytorch", exit_code=exit_code, gpu_memory_baseline_mib=baseline, gpu_memory_peak_mib=peak)
    check.check_run(EXAMPLE, result, log, use_gpu=use_gpu, num_workers=1)
    return result


def test_a_run_that_trained_on_the_gpu_and_left_its_checkpoint_passes(tmp_path):
    log, checkpoint = write_run(tmp_path)
    result = verdict(log)
    assert result.ok, result.failures
    assert (
        result.devices == ["cuda:0 (NVIDIA H200)"]
        and result.score_value == 0.9
        and result.checkpoint_path == checkpoint
    )


@pytest.mark.parametrize(
    ("change", "failure"),
    [
        ({"peak": 500}, "GPU memory never rose above the 500 MiB"),
        ({"peak": None}, "nvidia-smi could not read the GPU memory"),
        ({"use_gpu": False}, "not on cpu"),
        ({"exit_code": 1}, "the driver exited with 1"),
    ],
)
def test_a_run_that_did_not_use_the_gpu_or_failed_is_caught(tmp_path, change, failure):
    log, _ = write_run(tmp_path)
    result = verdict(log, **change)
    assert not result.ok and any(failure in line for line in result.failures), result.failures


def test_a_run_without_the_framework_checkpoint_file_or_a_worker_device_line_is_caught(tmp_path):
    log, _ = write_run(tmp_path, checkpoint_file="other.bin")
    result = verdict(log.split("\n", 1)[1])
    assert not result.ok
    assert any("holds no model.pt" in line for line in result.failures)
    assert any("0 of 1 Train workers said which device" in line for line in result.failures)


def test_a_failed_run_is_caught_with_its_error(tmp_path):
    log, _ = write_run(tmp_path, status="FAILED")
    result = verdict(log)
    assert not result.ok and "status FAILED: boom" in result.failures
