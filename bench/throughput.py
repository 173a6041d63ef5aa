"""Throughput: training throughput of the Lightning example through the runtime vs a hand-written Ray Train
script, same model and data; and 1 vs 2 workers.

Modes (each a plain Ray driver subprocess against the same head, launched the same way as overhead's (a):
``RAY_ADDRESS``/token env, ``PYTHONPATH=example_dags:.:bench``, the same ``py_modules`` in
``RAY_JOB_CONFIG_JSON_ENV_VAR``):

- ``runtime-N``: ``python -m airflow_ray_train_runtime b64:<TrainSpec>`` with the declarative loop
  ``airflow_ray_train_runtime.lightning:train_loop`` and the example DAG's ``LightningConfig`` (monitor
  ``val_accuracy``/max, top_k 2, seed 0, ``progress_every_n_steps=10``, ``log_every_n_steps=5``).
- ``handwritten-N``: ``python bench/lightning_handwritten.py`` (Ray's Lightning guide, same classes,
  hyperparameters, checkpoint config and ``pl.Trainer`` flags).

Both fit ``lightning_handwritten.TimedDigitsClassifier`` (the example's ``DigitsClassifier`` plus a timing
callback, see ``ThroughputCallback``): samples/s = training samples summed over ranks / the slowest rank's
``fit_s`` (``on_train_start`` -> ``on_train_end``). Also: the same over ``steps_s`` (training steps only),
and the driver's end-to-end wall time.

    .venv/bin/python bench/throughput.py --runs 5 --warmup 1     # starts and stops its own Ray head
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import words
from harness import BENCH, REPO, loadavg, med

#: The example DAG's run (``example_dags/example_ray_train_lightning.py``), epochs aside.
LR, HIDDEN, BATCH_SIZE, SEED = 2e-3, 64, 32, 0
#: Defaults sized for 2 cores: see ``--epochs``/``--repeat`` and the report's config line.
EPOCHS = 3
REPEAT = 10
MODES = ("runtime-2", "handwritten-2", "runtime-1")
ALL_MODES = ("runtime-2", "handwritten-2", "runtime-1", "handwritten-1")
TIMED = (
    "samples/s = training samples processed, summed over ranks / the slowest rank's `fit_s`; `fit_s` is "
    "Lightning's `on_train_start` -> `on_train_end` on each rank (every epoch's training steps, validation, and "
    "the epoch-end `RayTrainReportCallback`: checkpoint save + `ray.train.report`), measured by a callback both "
    "sides attach the same way (`TimedDigitsClassifier.configure_callbacks`). Not in it: worker start, "
    "`setup`, sanity-check validation, and the driver's work before and after `fit`. `steps` samples/s uses "
    "`steps_s` instead (per epoch `on_train_epoch_start` -> last `on_train_batch_end`, summed: training "
    "steps only). `CPU ms/sample` = the worker processes' CPU time (`time.process_time`, all threads) over the "
    "same training-step spans, summed over ranks, per sample: the work done per sample, much less sensitive to "
    "other load on a shared machine than samples/s. `CPU cores used outside the workers` = machine-wide busy "
    "CPU (`/proc/stat`, sampled every 0.25 s) during the fit minus the workers' own, per second: other load "
    "plus Ray's and the driver's processes; a run with a high value was starved by it. `wall` is the driver "
    "subprocess from spawn to exit."
)


class CpuSampler:
    """Machine-wide busy CPU (``/proc/stat``) sampled every ``interval`` s in a thread, so a run can tell how
    much CPU went to anything other than its training workers during its fit window."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _busy(self) -> float:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(fields) - fields[3] - fields[4]) / self._tick  # all but idle and iowait, in CPU-seconds

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._busy()))
            self._stop.wait(self.interval)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busy_between(self, start: float, end: float) -> tuple[float, float] | None:
        """(busy CPU-seconds, seconds) between the first sample at/after ``start`` and the last at/before ``end``."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        return inside[-1][1] - inside[0][1], inside[-1][0] - inside[0][0]


def importable() -> None:
    """The example package (its data and model) and ``lightning_handwritten`` importable in this process."""
    for path in (REPO / "example_dags", BENCH, REPO):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def prepare_data(folder: Path, repeat: int) -> Path:
    """The example's digits split (``prepare_digits``), with the training split repeated ``repeat`` times so
    an epoch is long enough to time; validation and test splits unchanged."""
    import numpy as np
    from ray_train_examples.lightning_digits import prepare_digits

    path = Path(prepare_digits(str(folder / "source")))
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["x_train"] = np.concatenate([arrays["x_train"]] * repeat)
    arrays["y_train"] = np.concatenate([arrays["y_train"]] * repeat)
    out = folder / f"digits_x{repeat}.npz"
    np.savez(out, **arrays)
    return out


def ship(head: Any) -> list[str]:
    """Upload the runtime, ``ray_train_examples`` and ``lightning_handwritten`` packages (skipping those the
    head has): the same ``py_modules`` for both sides."""
    import httpx

    from airflow_ray_train.packaging import code_package, runtime_package

    packages = [runtime_package(), code_package("ray_train_examples"), code_package("lightning_handwritten")]
    headers = {"Authorization": f"Bearer {head.token}"}
    for package in packages:
        assert package is not None
        url = f"{head.dashboard_url}/api/packages/gcs/{package.name}"
        if httpx.get(url, headers=headers, timeout=30).status_code == 200:
            continue
        response = httpx.put(url, headers=headers, content=package.read_bytes(), timeout=60)
        response.raise_for_status()
    return [p.uri for p in packages if p is not None]


def driver_env(head: Any, py_modules: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "RAY_ADDRESS": head.gcs_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": head.token,
            "PYTHONPATH": os.pathsep.join([str(REPO / "example_dags"), str(REPO), str(BENCH)]),
            "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"py_modules": py_modules}}),
        }
    )
    return env


def runtime_command(workers: int, epochs: int, data: Path, storage: Path, timing: Path, name: str) -> list[str]:
    from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP, LightningConfig
    from airflow_ray_train_runtime.spec import TrainSpec

    config = LightningConfig(
        module="lightning_handwritten:TimedDigitsClassifier",
        module_kwargs={"lr": LR, "hidden": HIDDEN, "timing_dir": str(timing)},
        datamodule="ray_train_examples.lightning_digits:DigitsDataModule",
        datamodule_kwargs={"data_path": str(data), "batch_size": BATCH_SIZE},
        trainer_kwargs={"max_epochs": epochs, "log_every_n_steps": 5},
        monitor="val_accuracy",
        mode="max",
        top_k=2,
        seed=SEED,
        progress_every_n_steps=10,
    )
    spec = TrainSpec(
        train_func=LIGHTNING_TRAIN_LOOP,
        run_name=name,
        submission_id=name,
        train_loop_config=config.train_loop_config(),
        scaling_config={"num_workers": workers, "use_gpu": False},
        run_config={"storage_path": str(storage), "checkpoint_config": config.checkpoint_config()},
    )
    return [sys.executable, "-m", "airflow_ray_train_runtime", spec.to_arg()]


def handwritten_command(workers: int, epochs: int, data: Path, storage: Path, timing: Path, name: str) -> list[str]:
    return [
        sys.executable,
        str(BENCH / "lightning_handwritten.py"),
        f"--num-workers={workers}",
        f"--epochs={epochs}",
        f"--data-path={data}",
        f"--storage-path={storage}",
        f"--name={name}",
        f"--batch-size={BATCH_SIZE}",
        f"--lr={LR}",
        f"--hidden={HIDDEN}",
        f"--seed={SEED}",
        f"--timing-dir={timing}",
    ]


def run_once(
    mode: str, env: dict[str, str], epochs: int, data: Path, storage: Path, logs: Path, cpu: CpuSampler | None = None
) -> dict[str, Any]:
    kind, workers = mode.rsplit("-", 1)
    name = f"tp-{mode}-{uuid.uuid4().hex[:8]}"
    timing = storage / "timing" / name
    build = runtime_command if kind == "runtime" else handwritten_command
    cmd = build(int(workers), epochs, data, storage, timing, name)
    log = logs / f"{name}.log"
    spawned = time.time()
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    wall = time.perf_counter() - started
    exited = time.time()
    ranks = [json.loads(p.read_text()) for p in sorted(timing.glob("rank*.json"))]
    if proc.returncode != 0 or len(ranks) != int(workers):
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{mode} exited {proc.returncode} with {len(ranks)}/{workers} timing records:\n{tail}")
    samples = sum(r["samples"] for r in ranks)
    fit_s = max(r["fit_s"] for r in ranks)
    steps_s = max(r["steps_s"] for r in ranks)
    # Epoch-end cost per epoch on rank 0: validation + RayTrainReportCallback (checkpoint + report) + the rest.
    rank0 = next(r for r in ranks if r["rank"] == 0)
    # CPU not spent by the training workers during the fit: other load on the machine, plus Ray's and the
    # driver's own processes (controller, raylet, GCS, log monitor, the runtime's recorder actor...).
    busy = cpu.busy_between(max(r["wall_started"] for r in ranks), min(r["wall_ended"] for r in ranks)) if cpu else None
    workers_cpu = sum(r["cpu_fit_s"] for r in ranks) * (busy[1] / fit_s) if busy else 0.0
    return {
        "mode": mode,
        "name": name,
        "samples": samples,
        "fit_s": fit_s,
        "steps_s": steps_s,
        "samples_per_s": samples / fit_s,
        "step_samples_per_s": samples / steps_s,
        "epoch_end_s": (rank0["fit_s"] - rank0["steps_s"]) / max(len(rank0["epochs"]), 1),
        "cpu_ms_per_sample": 1000 * sum(r["cpu_steps_s"] for r in ranks) / samples,
        "cpu_fit_ms_per_sample": 1000 * sum(r["cpu_fit_s"] for r in ranks) / samples,
        "wall_s": wall,
        "non_worker_cores": max(busy[0] - workers_cpu, 0.0) / busy[1] if busy else float("nan"),
        # Driver spawn -> the first rank's on_train_start, and the last rank's on_train_end -> driver exit.
        "before_fit_s": min(r["wall_started"] for r in ranks) - spawned,
        "after_fit_s": exited - max(r["wall_ended"] for r in ranks),
        "load": loadavg(),
    }


def bench_throughput(
    head: Any,
    runs: int,
    warmup: int,
    storage: Path,
    *,
    epochs: int = EPOCHS,
    repeat: int = REPEAT,
    modes: tuple[str, ...] = MODES,
) -> dict[str, Any]:
    """Rounds (``warmup`` unrecorded first), each running every mode once in an order rotated every round.
    Returns the config, raw runs per mode, medians and ratios."""
    importable()
    storage = Path(storage).resolve()
    data = prepare_data(storage / "data", repeat)
    logs = storage / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = driver_env(head, ship(head))
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    started = time.perf_counter()
    load_start = loadavg()
    with CpuSampler() as cpu:
        for rnd in range(-warmup, runs):
            shift = rnd % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                row = run_once(mode, env, epochs, data, storage / "ray_results", logs, cpu)
                row["round"] = rnd
                print(f"[throughput] round {rnd} {json.dumps(row)}", flush=True)
                if rnd >= 0:
                    rows[mode].append(row)
    import numpy as np

    with np.load(data) as arrays:
        train_size, val_size = len(arrays["y_train"]), len(arrays["y_val"])
    results = {
        "config": {
            "epochs": epochs,
            "repeat": repeat,
            "train_samples": train_size,
            "val_samples": val_size,
            "batch_size": BATCH_SIZE,
            "lr": LR,
            "hidden": HIDDEN,
            "seed": SEED,
            "modes": list(modes),
            "runs": runs,
            "warmup": warmup,
        },
        "runs": rows,
        "seconds": time.perf_counter() - started,
        "load_start": load_start,
        "load_end": loadavg(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    results.update(summarize(rows))
    return results


def run(bench: Any) -> dict[str, Any]:
    """The section as ``bench/run.py`` runs it: ``BENCH_RUNS`` rounds after ``BENCH_TP_WARMUP`` (default 0: its
    drivers are fresh processes, with no first-call cost to keep out)."""
    warmup = int(os.environ.get("BENCH_TP_WARMUP", "0"))
    return bench_throughput(bench.head, bench.settings.runs, warmup, bench.workspace.root / "tp")


def summarize(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    keys = (
        "samples_per_s",
        "step_samples_per_s",
        "cpu_ms_per_sample",
        "cpu_fit_ms_per_sample",
        "epoch_end_s",
        "non_worker_cores",
        "wall_s",
        "before_fit_s",
        "after_fit_s",
    )
    medians = {mode: {k: med([r[k] for r in runs]) for k in keys} for mode, runs in rows.items() if runs}
    pairs = [
        ("runtime-2 / handwritten-2", "runtime-2", "handwritten-2"),
        ("runtime-1 / handwritten-1", "runtime-1", "handwritten-1"),
        ("runtime-2 / runtime-1 (speedup)", "runtime-2", "runtime-1"),
        ("handwritten-2 / handwritten-1 (speedup)", "handwritten-2", "handwritten-1"),
    ]
    ratios = {}
    for label, num, den in pairs:
        if not (rows.get(num) and rows.get(den)):
            continue
        entry = {}
        for key in ("samples_per_s", "step_samples_per_s", "cpu_ms_per_sample", "wall_s"):
            per_round = [n[key] / d[key] for n, d in zip(rows[num], rows[den], strict=False)]
            entry[key] = {"of_medians": medians[num][key] / medians[den][key], "per_round_median": med(per_round)}
        ratios[label] = entry
    return {"medians": medians, "ratios": ratios}


# -- report ---------------------------------------------------------------------------------------------------

TARGET = 0.97


def target_lines(results: dict[str, Any]) -> list[str]:
    """The throughput lines of the report's "targets at a glance"."""
    ratios = results.get("ratios") or summarize(results["runs"])["ratios"]
    out = []
    main = ratios.get("runtime-2 / handwritten-2")
    if main:
        sps = main["samples_per_s"]
        cpu = main["cpu_ms_per_sample"]
        ok = sps["of_medians"] >= TARGET
        out.append(
            f"- throughput, runtime / hand-written (2 workers, samples/s): {sps['of_medians']:.3f} of medians: "
            f"target >= {TARGET} {words.verdict(ok)} ({sps['per_round_median']:.3f} median of "
            f"per-round ratios; CPU ms per sample, runtime / hand-written, {cpu['of_medians']:.3f}; see Throughput)"
        )
    speedup = ratios.get("runtime-2 / runtime-1 (speedup)")
    if speedup:
        out.append(f"- 2 workers / 1 worker (runtime, samples/s): {speedup['samples_per_s']['of_medians']:.2f}")
    return out


def throughput_section(results: dict[str, Any]) -> list[str]:
    """The markdown section for REPORT.md."""
    cfg, rows = results["config"], results["runs"]
    modes = [m for m in cfg["modes"] if rows.get(m)]
    width = max(len(rows[m]) for m in modes)
    out = [
        "## Throughput: the Lightning example through the runtime vs hand-written Ray Train",
        "",
        f"Ran {results['date_utc']} UTC, load {results['load_start']} -> {results['load_end']}, "
        f"{cfg['runs']} rounds + {cfg['warmup']} warm-up, {results['seconds'] / 60:.1f} min in all.",
        "",
        f"- Job: `DigitsClassifier(lr={cfg['lr']}, hidden={cfg['hidden']})` + `DigitsDataModule(batch_size="
        f"{cfg['batch_size']})`, seed {cfg['seed']}, {cfg['epochs']} epochs, training split repeated "
        f"{cfg['repeat']}x ({cfg['train_samples']} samples/epoch, validation {cfg['val_samples']}), "
        "checkpoint + report every epoch (top 2 by `val_accuracy`), DDP on CPU (gloo), head `num_cpus=4`.",
        "- runtime-N: `python -m airflow_ray_train_runtime b64:<spec>` with `train_func="
        "airflow_ray_train_runtime.lightning:train_loop` and the example DAG's `LightningConfig`; "
        "handwritten-N: `bench/lightning_handwritten.py` (Ray's Lightning guide: `TorchTrainer`, "
        "`RayDDPStrategy`, `RayLightningEnvironment`, `RayTrainReportCallback`, `prepare_trainer`, same "
        "`pl.Trainer` flags). Both plain Ray drivers, same env and `py_modules`; modes rotate every round.",
        f"- What is timed: {TIMED}",
        "",
        "Samples/s per run (fit loop):",
        "",
        "| | " + " | ".join(f"run {i + 1}" for i in range(width)) + " | median |",
        "|---|" + "---:|" * (width + 1),
    ]
    for mode in modes:
        values = [r["samples_per_s"] for r in rows[mode]]
        pad = " | " * (width - len(values))
        out.append(f"| {mode} | {' | '.join(f'{v:.0f}' for v in values)}{pad} | {med(values):.0f} |")
    for mode in modes:
        values = [r["non_worker_cores"] for r in rows[mode]]
        pad = " | " * (width - len(values))
        cells = " | ".join(f"{v:.2f}" for v in values)
        out.append(f"| {mode}: CPU cores used outside the workers during the fit | {cells}{pad} | {med(values):.2f} |")
    out += [
        "",
        "Medians per mode:",
        "",
        "| | samples/s (fit) | samples/s (steps only) | CPU ms/sample (steps) | epoch-end s/epoch (rank 0) "
        "| driver wall s | spawn -> fit start s | fit end -> exit s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in modes:
        m = results["medians"][mode]
        out.append(
            f"| {mode} | {m['samples_per_s']:.0f} | {m['step_samples_per_s']:.0f} | {m['cpu_ms_per_sample']:.3f} "
            f"| {m['epoch_end_s']:.3f} "
            f"| {m['wall_s']:.2f} | {m['before_fit_s']:.2f} | {m['after_fit_s']:.2f} |"
        )
    out += [
        "",
        "Ratios (of medians unless said; per-round pairs runs that ran back to back):",
        "",
        "| ratio | samples/s (fit) | samples/s (fit), per-round median | samples/s (steps) | CPU ms/sample "
        "| driver wall | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, entry in results["ratios"].items():
        target = f">= {TARGET}" if label.startswith("runtime-2 / handwritten") else ""
        fit = entry["samples_per_s"]
        out.append(
            f"| {label} | {fit['of_medians']:.3f} | {fit['per_round_median']:.3f} "
            f"| {entry['step_samples_per_s']['of_medians']:.3f} | {entry['cpu_ms_per_sample']['of_medians']:.3f} "
            f"| {entry['wall_s']['of_medians']:.3f} | {target} |"
        )
    out += [
        "",
        "samples/s: higher is faster (runtime/handwritten is the target ratio; N-worker ratios are the speedup). "
        "CPU ms/sample: lower is cheaper; runtime/handwritten near 1 means the same work per sample, 2/1 is "
        "what DDP adds per sample.",
        "",
        "Load average (1/5/15 min) when each run ended:",
        "",
    ]
    out += [f"- {mode}: " + "; ".join(r["load"] for r in rows[mode]) for mode in modes]
    main = results["ratios"].get("runtime-2 / handwritten-2")
    if main:
        value = main["samples_per_s"]["of_medians"]
        verdict = words.target(value, TARGET, at_most=False)
        out += [
            "",
            f"Target: runtime throughput >= {TARGET} of the hand-written script: {value:.3f} of medians "
            f"({main['samples_per_s']['per_round_median']:.3f} per-round median), {verdict}.",
        ]
    out.append("")
    return out


def notes(results: dict[str, Any]) -> list[str]:
    """The report's notes on throughput, from the numbers."""
    ratios, medians = results.get("ratios") or {}, results.get("medians") or {}
    main, speedup = ratios.get("runtime-2 / handwritten-2"), ratios.get("runtime-2 / runtime-1 (speedup)")
    out = []
    if main and "runtime-2" in medians and "handwritten-2" in medians:
        sps, cpu = main["samples_per_s"], main["cpu_ms_per_sample"]
        runtime_cores = medians["runtime-2"]["non_worker_cores"]
        hand_cores = medians["handwritten-2"]["non_worker_cores"]
        out.append(
            f"- Throughput, runtime / hand-written: {sps['of_medians']:.3f} of medians ({sps['per_round_median']:.3f} "
            f"median of per-round ratios), target >= {TARGET} {words.target(sps['of_medians'], TARGET, at_most=False)}"
            f"; the workers' CPU per sample {cpu['of_medians']:.3f}x. Nothing per sample differs: the runtime adds a "
            "progress print every `progress_every_n_steps` steps on rank 0 and one report record per epoch. Cores "
            f"used outside the workers during the fit: {runtime_cores:.2f} (runtime) vs {hand_cores:.2f} "
            "(hand-written); the runtime's driver also has its report recorder actor."
        )
    if speedup:
        value = speedup["samples_per_s"]["of_medians"]
        how = "faster" if value > 1 else "slower"
        out.append(
            f"- 2 workers were {how} than 1 ({value:.2f}x the samples/s): a small model on 2 cores, where the "
            "per-step gradient all-reduce and `sync_dist` weigh against the halved batch work."
        )
    return out


def throughput_plot(results: dict[str, Any], out_dir: Path) -> str:
    """``throughput.png``: samples/s per run and mode (line = median)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["runs"]
    modes = [m for m in results["config"]["modes"] if rows.get(m)]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, mode in enumerate(modes):
        values = [r["samples_per_s"] for r in rows[mode]]
        ax.scatter([i] * len(values), values, alpha=0.6)
        ax.hlines(med(values), i - 0.25, i + 0.25, colors="black")
    ax.set_xticks(range(len(modes)), modes, fontsize=8)
    ax.set_ylabel("training samples/s (fit loop)")
    ax.set_title("Lightning digits: runtime vs hand-written Ray Train (line = median)")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    path = Path(out_dir) / "throughput.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def main(argv: list[str] | None = None) -> int:
    from airflow_ray_train.local_cluster import start_ray_head

    parser = argparse.ArgumentParser(description="Lightning throughput, runtime vs hand-written")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--repeat", type=int, default=REPEAT, help="how many times the training split is repeated")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {','.join(ALL_MODES)}")
    parser.add_argument("--out", default=str(BENCH), help="where throughput.json/.md/.png go")
    parser.add_argument("--keep", action="store_true", help="keep the storage (driver logs, Ray results)")
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    unknown = set(modes) - set(ALL_MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="art_tp_"))
    head = start_ray_head(temp_dir=str(root / "ray"), token=secrets.token_hex(16), num_cpus=4)
    try:
        results = bench_throughput(
            head, args.runs, args.warmup, root / "storage", epochs=args.epochs, repeat=args.repeat, modes=modes
        )
    finally:
        head.stop()
        if args.keep:
            print(f"[throughput] kept {root / 'storage'}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    (out / "throughput.json").write_text(json.dumps(results, indent=1))
    section = throughput_section(results)
    section.insert(-1, f"![throughput]({throughput_plot(results, out)})\n")
    (out / "throughput.md").write_text("\n".join(section))
    print("\n".join(section), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
