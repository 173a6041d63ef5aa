"""The GPU check: a Ray head on this machine, then the runtime driver (``python -m airflow_ray_train_runtime
SPEC``, no Airflow) for the plain PyTorch, the Lightning and the Transformers examples, and what each run left.

For each run it checks the exit status, the ``ResultManifest`` (in the log and on storage: SUCCEEDED, the
checkpoint holds the framework's files, the metrics are there and above chance, one report per epoch), the
device every Train worker said it trained on, and, with ``--use-gpu``, that GPU memory went up while it ran.
It writes ``summary.json``, ``summary.txt`` and one log per run into ``--out`` (after every run, so a run cut
short still leaves what was done) and exits 1 on any failed check.

On the GPU machine ``gpu/device_check.sh`` installs the kit's wheels and runs this with ``--use-gpu``; here
``make gpu-dryrun`` runs it on the CPU with the project's venv. The Transformers run uses a tiny BERT saved
with ``save_pretrained`` and ``tests/data/reviews.csv``: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from depcheck import Dist, unmet
from kit import ROOTS
from packaging.markers import default_environment

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_dags"
REVIEWS = REPO / "tests" / "data" / "reviews.csv"
sys.path[:0] = [str(REPO), str(EXAMPLES)]

from airflow_ray_train.local_cluster import start_ray_head  # noqa: E402
from airflow_ray_train_runtime.spec import ResultManifest, TrainSpec, manifest_from_log  # noqa: E402

#: What ``airflow_ray_train_runtime.frameworks.worker_device`` prints in each Train worker.
DEVICE_LINE = re.compile(r"\[(\w+)\] worker (\d+)/(\d+) trains on (\S+?)(?: \((.+)\))?$", re.MULTILINE)
LOG_COPY_LIMIT = 4 * 2**20


@dataclass(frozen=True)
class Example:
    """One run and what it must leave: ``checkpoint_file`` inside the checkpoint directory, ``score`` in the
    final metrics at ``floor`` or above (chance is well below), and ``reports`` reports (one per epoch)."""

    name: str
    spec: TrainSpec
    checkpoint_file: str
    score: str
    floor: float
    reports: int


@dataclass
class RunResult:
    name: str
    ok: bool = False
    failures: list[str] = field(default_factory=list)
    wall_s: float | None = None
    exit_code: int | None = None
    score: str | None = None
    score_value: float | None = None
    num_reports: int | None = None
    devices: list[str] = field(default_factory=list)
    gpu_memory_baseline_mib: int | None = None
    gpu_memory_peak_mib: int | None = None
    checkpoint_path: str | None = None
    log: str | None = None


def prepare_examples(work: Path, use_gpu: bool, num_workers: int) -> list[Example]:
    """The data (digits split, reviews split, a tiny BERT) and the three specs."""
    from ray_train_examples.lightning_digits import prepare_digits
    from ray_train_examples.transformers_text import make_tiny_bert, prepare_splits

    from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP, LightningConfig
    from airflow_ray_train_runtime.transformers import TRANSFORMERS_TRAIN_LOOP, SequenceClassificationConfig

    digits = prepare_digits(str(work / "digits"))
    splits = prepare_splits(str(work / "reviews"), dataset_name="csv", data_files=str(REVIEWS))
    tiny_bert = make_tiny_bert(str(work / "tiny_bert"), str(REVIEWS))
    scaling = {"num_workers": num_workers, "use_gpu": use_gpu}
    storage = str(work / "ray_results")
    best_by = {"checkpoint_score_order": "max", "num_to_keep": 1}
    lightning = LightningConfig(
        module="ray_train_examples.lightning_digits:DigitsClassifier",
        module_kwargs={"lr": 2e-3, "hidden": 64},
        datamodule="ray_train_examples.lightning_digits:DigitsDataModule",
        datamodule_kwargs={"data_path": digits, "batch_size": 32},
        trainer_kwargs={"max_epochs": 3, "log_every_n_steps": 5},
        monitor="val_accuracy",
        mode="max",
        top_k=1,
        seed=0,
        progress_every_n_steps=20,
    )
    transformers = SequenceClassificationConfig(
        model_name_or_path=tiny_bert,
        dataset_name="csv",
        data_files={"train": splits["train"], "validation": splits["validation"]},
        max_length=32,
        training_args={"num_train_epochs": 4, "learning_rate": 1e-3, "per_device_train_batch_size": 8},
    )

    def spec(name: str, train_func: str, config: dict[str, Any], score: str) -> TrainSpec:
        return TrainSpec(
            train_func=train_func,
            run_name=f"gpu-check-{name}",
            submission_id=f"gpu-check-{name}-{secrets.token_hex(4)}",
            train_loop_config=config,
            scaling_config=scaling,
            run_config={"storage_path": storage, "checkpoint_config": {**best_by, "checkpoint_score_attribute": score}},
        )

    pytorch_config = {"epochs": 3, "hidden": 64, "batch_size": 64}
    return [
        Example(
            "pytorch",
            spec("pytorch", "ray_train_examples.pytorch_classifier:train_func", pytorch_config, "val_accuracy"),
            "model.pt",
            "val_accuracy",
            0.5,
            3,
        ),
        Example(
            "lightning",
            spec("lightning", LIGHTNING_TRAIN_LOOP, lightning.train_loop_config(), "val_accuracy"),
            "checkpoint.ckpt",
            "val_accuracy",
            0.5,
            3,
        ),
        Example(
            "transformers",
            spec("transformers", TRANSFORMERS_TRAIN_LOOP, transformers.train_loop_config(), "eval_accuracy"),
            "checkpoint/model.safetensors",
            "eval_accuracy",
            0.6,
            4,
        ),
    ]


def gpu_memory_used_mib() -> int | None:
    """Memory in use on all GPUs together, from ``nvidia-smi``; None where it cannot be read."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(int(float(line)) for line in out.split() if line.strip())


class GpuMemoryPeak:
    """Samples ``nvidia-smi`` twice a second while a run is going and keeps the highest reading."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            used = gpu_memory_used_mib()
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_driver(example: Example, work: Path, log_path: Path, env: dict[str, str], timeout: float) -> int | None:
    """``python -m airflow_ray_train_runtime SPEC`` in its own process group; the exit code, None on timeout."""
    spec_file = work / f"{example.name}.spec.json"
    spec_file.write_text(example.spec.to_json())
    cmd = [sys.executable, "-m", "airflow_ray_train_runtime", str(spec_file)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None


def check_run(example: Example, result: RunResult, log_text: str, use_gpu: bool, num_workers: int) -> None:
    """Fill ``result`` from the run's log and the files it left; each check that fails adds a line."""
    fail = result.failures.append
    if result.exit_code is None:
        fail("the driver timed out and was killed (--run-timeout, --deadline)")
    elif result.exit_code != 0:
        fail(f"the driver exited with {result.exit_code}")
    manifest = manifest_from_log(log_text)
    if manifest is None:
        fail("no ResultManifest in the driver's log")
    else:
        check_manifest(example, manifest, result)
    found = DEVICE_LINE.findall(log_text)
    result.devices = sorted({f"{device} ({name})" if name else device for _, _, _, device, name in found})
    if len(found) < num_workers:
        fail(f"{len(found)} of {num_workers} Train workers said which device they trained on")
    expected = "cuda" if use_gpu else "cpu"
    if any(not device.startswith(expected) for _, _, _, device, _ in found):
        fail(f"a worker trained on {result.devices}, not on {expected}")
    if use_gpu:
        base, peak = result.gpu_memory_baseline_mib, result.gpu_memory_peak_mib
        if base is None or peak is None:
            fail("nvidia-smi could not read the GPU memory")
        elif peak <= base:
            fail(f"GPU memory never rose above the {base} MiB in use before the run (peak {peak} MiB)")
    result.ok = not result.failures


def check_manifest(example: Example, manifest: ResultManifest, result: RunResult) -> None:
    fail = result.failures.append
    if manifest.status != "SUCCEEDED":
        fail(f"status {manifest.status}: {(manifest.error or {}).get('message')}")
    stored = Path(manifest.manifest_path)
    if not stored.is_file():
        fail(f"the manifest file {stored} is missing")
    elif ResultManifest.from_json(stored.read_text()).to_dict() != manifest.to_dict():
        fail(f"the manifest file {stored} differs from the one in the log")
    result.checkpoint_path = manifest.checkpoint_path
    for label, path in (("checkpoint", manifest.checkpoint_path), ("best checkpoint", manifest.best_checkpoint_path)):
        if not path or not (Path(path) / example.checkpoint_file).is_file():
            fail(f"the {label} {path} holds no {example.checkpoint_file}")
    result.num_reports = manifest.num_reports
    if manifest.num_reports != example.reports:
        fail(f"{manifest.num_reports} reports, expected {example.reports} (one per epoch)")
    if not manifest.metrics_history_path or not Path(manifest.metrics_history_path).is_file():
        fail(f"no metrics history at {manifest.metrics_history_path}")
    value = manifest.metrics.get(example.score)
    result.score = example.score
    if not isinstance(value, (int, float)):
        fail(f"the final metrics have no {example.score}: {sorted(manifest.metrics)}")
        return
    result.score_value = float(value)
    if value < example.floor:
        fail(f"{example.score} {value:.3f} is below {example.floor} (it did not learn)")


def environment_report() -> dict[str, Any]:
    """Versions and devices here, and what the carried roots need that this environment does not meet."""
    import torch

    def lookup(name: str) -> Dist | None:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
        return Dist(name, dist.version, dist.read_text("METADATA"))

    try:
        _, problems = unmet(ROOTS, lookup, dict(default_environment()))
    except Exception as exc:  # noqa: BLE001 - a report, not a check: odd metadata must not stop the check
        problems = [f"could not read the requirements: {exc!r}"]
    versions = {}
    for name in ("ray", "torch", "pytorch-lightning", "lightning", "transformers", "accelerate", "datasets"):
        dist = lookup(name)
        versions[name] = dist.version if dist else None
    gpus = None
    if shutil.which("nvidia-smi"):
        gpus = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_cuda": torch.version.cuda,
        "cuda_devices": torch.cuda.device_count(),
        "nvidia_smi": gpus,
        "versions": versions,
        "unmet_requirements": problems,
    }


def summary_text(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    mode = "use_gpu=True" if summary["use_gpu"] else "dry run, CPU"
    lines = [f"GPU check {'PASSED' if summary['ok'] else 'FAILED'} ({mode}), {summary.get('wall_s', 0):.0f} s in all"]
    if env:
        lines += [
            f"python {env['python']}, {env['platform']}, {env['cpus']} CPUs; GPUs: {env['nvidia_smi'] or 'none'}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        ]
        lines += [f"unmet requirement (warning): {line}" for line in env["unmet_requirements"]]
    if summary.get("head_start_s") is not None:
        lines.append(f"Ray head up in {summary['head_start_s']:.1f} s")
    for run in summary["runs"]:
        score = f"{run['score']} {run['score_value']:.3f}" if run["score_value"] is not None else "no score"
        memory = (
            f", GPU memory {run['gpu_memory_baseline_mib']} -> {run['gpu_memory_peak_mib']} MiB"
            if run["gpu_memory_peak_mib"] is not None
            else ""
        )
        lines.append(
            f"{run['name']:<12} {'ok  ' if run['ok'] else 'FAIL'} {run['wall_s'] or 0:6.1f} s, {score}, "
            f"{run['num_reports']} reports, on {', '.join(run['devices']) or '?'}{memory}"
        )
        lines += [f"    - {failure}" for failure in run["failures"]]
    lines += [f"FAIL: {failure}" for failure in summary["failures"]]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    (out / "summary.txt").write_text(summary_text(summary))


def copy_tail(source: Path, target: Path) -> None:
    if source.is_file():
        with open(source, "rb") as handle:
            handle.seek(max(0, source.stat().st_size - LOG_COPY_LIMIT))
            target.write_bytes(handle.read())


def job_environment(work: Path) -> dict[str, str]:
    """What the head (so every Train worker) and the driver run with: the repository and the examples
    importable, the HuggingFace libraries offline with their caches in the work dir."""
    path = [str(REPO), str(EXAMPLES), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        "PYTHONPATH": os.pathsep.join(path),
        "HF_HOME": str(work / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where summary.json, summary.txt and the logs go")
    parser.add_argument("--use-gpu", action="store_true", help="scaling_config use_gpu=True (else the CPU dry run)")
    parser.add_argument("--num-workers", type=int, default=1, help="Train workers per run (one GPU each)")
    parser.add_argument("--run-timeout", type=float, default=180, help="seconds one run may take")
    parser.add_argument("--deadline", type=float, default=360, help="seconds the whole check may take")
    parser.add_argument("--only", default="", help="comma-separated runs to do (pytorch,lightning,transformers)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.log"), *out.glob("summary.*")]:
        stale.unlink()
    # Short: Ray's unix socket paths under the temp dir must stay under ~107 characters.
    work = Path(tempfile.mkdtemp(prefix="art_gpu_"))
    os.environ.update(job_environment(work))
    signal.signal(signal.SIGTERM, _on_sigterm)
    summary: dict[str, Any] = {"ok": False, "use_gpu": args.use_gpu, "runs": [], "failures": [], "environment": {}}
    head = None
    try:
        summary["environment"] = environment_report()
        write_summary(out, summary)
        gpus = summary["environment"]["cuda_devices"]
        if args.use_gpu and gpus < args.num_workers:
            raise RuntimeError(f"--use-gpu with {args.num_workers} workers, but torch sees {gpus} CUDA devices")
        only = set(filter(None, args.only.split(",")))
        examples = [e for e in prepare_examples(work, args.use_gpu, args.num_workers) if not only or e.name in only]
        print(f"data and models ready after {time.monotonic() - started:.0f} s; starting a Ray head", flush=True)
        head_started = time.monotonic()
        head = start_ray_head(
            temp_dir=str(work / "ray"),
            token=secrets.token_hex(16),
            num_cpus=max(4, min(os.cpu_count() or 1, 16)),
            num_gpus=gpus if args.use_gpu else 0,
        )
        summary["head_start_s"] = time.monotonic() - head_started
        for example in examples:
            summary["runs"].append(asdict(run_example(example, args, work, out, head, started)))
            write_summary(out, summary)
    except BaseException as exc:  # noqa: BLE001 - whatever stops the check goes into the summary
        summary["failures"].append(f"{type(exc).__name__}: {exc}")
    finally:
        if head is not None:
            head.stop()
            copy_tail(Path(head.log_file), out / "ray_head.log")
        summary["wall_s"] = time.monotonic() - started
        summary["ok"] = bool(summary["runs"]) and not summary["failures"] and all(r["ok"] for r in summary["runs"])
        write_summary(out, summary)
        shutil.rmtree(work, ignore_errors=True)
    print(summary_text(summary), end="", flush=True)
    return 0 if summary["ok"] else 1


def run_example(
    example: Example, args: argparse.Namespace, work: Path, out: Path, head: Any, started: float
) -> RunResult:
    """One run through the driver against ``head``, watched for GPU memory, then checked."""
    result = RunResult(example.name, log=f"{example.name}.log")
    left = args.deadline - (time.monotonic() - started)
    if left < 30:
        result.failures.append(f"not run: the {args.deadline:.0f} s deadline was reached")
        return result
    print(f"run {example.name} ({example.spec.train_func})", flush=True)
    env = {**os.environ, "RAY_ADDRESS": head.gcs_address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head.token}
    log_path = out / f"{example.name}.log"
    sampler = GpuMemoryPeak() if args.use_gpu else contextlib.nullcontext()
    result.gpu_memory_baseline_mib = gpu_memory_used_mib() if args.use_gpu else None
    run_started = time.monotonic()
    with sampler:
        result.exit_code = run_driver(example, work, log_path, env, min(args.run_timeout, left))
    result.wall_s = time.monotonic() - run_started
    if isinstance(sampler, GpuMemoryPeak):
        result.gpu_memory_peak_mib = sampler.peak
    check_run(example, result, log_path.read_text(errors="replace"), args.use_gpu, args.num_workers)
    print(f"  {'ok' if result.ok else 'FAILED'} in {result.wall_s:.1f} s {result.failures or ''}", flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
