"""The Lightning and Transformers helpers' pure parts: config mapping, missing-framework messages, the
learning curve, and the Asset example's folder registry. No cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_ray_train_runtime import lightning as rl
from airflow_ray_train_runtime import transformers as rt
from airflow_ray_train_runtime.frameworks import FrameworkNotInstalledError, import_object
from airflow_ray_train_runtime.learning_curve import learning_curve_panels, learning_curve_png
from airflow_ray_train_runtime.spec import ResultManifest, SpecError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("monitor", "mode", "top_k", "expected"),
    [
        (
            "val_loss",
            "min",
            3,
            {"num_to_keep": 3, "checkpoint_score_attribute": "val_loss", "checkpoint_score_order": "min"},
        ),
        ("val_accuracy", "max", -1, {"checkpoint_score_attribute": "val_accuracy", "checkpoint_score_order": "max"}),
        (None, "min", 1, {"num_to_keep": 1}),
        (None, "min", None, {}),
    ],
)
def test_checkpoint_monitor_and_top_k_become_ray_checkpoint_config(monitor, mode, top_k, expected):
    assert rl.checkpoint_config(monitor, mode, top_k) == expected


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"top_k": 0}, "top_k"), ({"top_k": -2}, "top_k"), ({"mode": "maximum"}, "mode"), ({"monitor": ""}, "monitor")],
)
def test_bad_checkpoint_settings_name_the_field(kwargs, field):
    with pytest.raises(SpecError) as info:
        rl.checkpoint_config(**kwargs)
    assert info.value.field == field and "Fix:" in str(info.value)


def test_lightning_config_is_the_loop_config_the_checkpoint_config_and_the_modules_to_ship():
    config = rl.LightningConfig(
        module="my_models.digits:Classifier",
        module_kwargs={"lr": "{{ params.lr }}"},
        datamodule="my_data.digits:DataModule",
        trainer_kwargs={"max_epochs": 3},
        monitor="val_loss",
        top_k=2,
    )
    loop_config = config.train_loop_config()
    json.dumps(loop_config)  # crosses to the cluster as JSON
    assert rl.LightningConfig.from_train_loop_config(loop_config) == config
    assert config.checkpoint_config() == {
        "num_to_keep": 2,
        "checkpoint_score_attribute": "val_loss",
        "checkpoint_score_order": "min",
    }
    assert config.code_modules() == ["my_models.digits", "my_data.digits"]
    assert rl.LIGHTNING_TRAIN_LOOP == "airflow_ray_train_runtime.lightning:train_loop"
    with pytest.raises(SpecError, match="max_epoch"):
        rl.LightningConfig.from_train_loop_config({**loop_config, "max_epoch": 3})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"module": "my_models.Classifier"}, "module"),
        ({"datamodule": "nope"}, "datamodule"),
        ({"strategy": "horovod"}, "strategy"),
        ({"trainer_kwargs": {"strategy": "ddp"}}, "trainer_kwargs.strategy"),
        ({"module_kwargs": {"loss": object()}}, "module_kwargs"),
    ],
)
def test_lightning_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(SpecError) as info:
        rl.LightningConfig(**{"module": "m:C", **kwargs})
    assert info.value.field.startswith(field)


def test_sequence_classification_config_checks_data_and_output_dir():
    config = rt.SequenceClassificationConfig(
        model_name_or_path="bert-base-cased", dataset_name="yelp_review_full", compute_metrics="my_metrics:f1"
    )
    assert rt.SequenceClassificationConfig.from_train_loop_config(config.train_loop_config()) == config
    assert config.code_modules() == ["my_metrics"]
    with pytest.raises(SpecError) as info:
        rt.SequenceClassificationConfig(model_name_or_path="m", dataset_name="csv")
    assert info.value.field == "data_files"
    with pytest.raises(SpecError) as info:
        rt.SequenceClassificationConfig(model_name_or_path="m", data_files="a.csv", training_args={"output_dir": "out"})
    assert info.value.field == "training_args.output_dir"


def test_framework_checkpoint_locations(tmp_path):
    assert rl.checkpoint_file("/runs/r/checkpoint_1") == "/runs/r/checkpoint_1/checkpoint.ckpt"
    assert rl.checkpoint_file("s3://b/r/checkpoint_1/") == "s3://b/r/checkpoint_1/checkpoint.ckpt"
    assert rl.checkpoint_file("/x/best.ckpt") == "/x/best.ckpt"
    assert rt.model_dir("/runs/r/checkpoint_1") == "/runs/r/checkpoint_1/checkpoint"
    (tmp_path / "config.json").write_text("{}")  # already a model directory
    assert rt.model_dir(str(tmp_path)) == str(tmp_path)


def test_missing_lightning_fails_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    with pytest.raises(FrameworkNotInstalledError) as info:
        rl.import_lightning()
    assert info.value.pip_command == 'pip install "pytorch-lightning>=2.1"'
    assert 'pip install "pytorch-lightning>=2.1"' in str(info.value)
    assert "airflow-ray-train[frameworks]" in str(info.value)
    with pytest.raises(FrameworkNotInstalledError):
        rl.RayDDPStrategy  # noqa: B018 - Ray's names resolve on first use


def test_missing_transformers_and_datasets_fail_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(FrameworkNotInstalledError, match=r'pip install "transformers>=4.46" accelerate'):
        rt.training_arguments()
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(FrameworkNotInstalledError, match=r'pip install "datasets>=2.18"'):
        rt.import_datasets()


def test_deepspeed_strategy_needs_deepspeed(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FrameworkNotInstalledError, match="pip install deepspeed"):
        rl.make_strategy("deepspeed")
    with pytest.raises(ValueError, match="use one of"):
        rl.make_strategy("horovod")


def test_import_object_names_the_field():
    assert import_object("json:dumps", "compute_metrics") is json.dumps
    with pytest.raises(ValueError, match=r"compute_metrics is 'json\.dumps'"):
        import_object("json.dumps", "compute_metrics")
    with pytest.raises(ImportError, match="ship_modules"):
        import_object("no_such_module_xyz:f", "module")
    with pytest.raises(ImportError, match="has no attribute"):
        import_object("json:nope", "module")


def test_framework_helpers_import_without_the_frameworks_or_ray():
    # The DAG files import these at parse time: no Lightning, Transformers, Ray or torch may load then.
    blocked = ["lightning", "pytorch_lightning", "transformers", "datasets", "ray", "torch", "airflow"]
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in {blocked!r}:
            raise ImportError("blocked " + fullname)
sys.meta_path.insert(0, Block())
from airflow_ray_train_runtime.lightning import LightningConfig
from airflow_ray_train_runtime.transformers import SequenceClassificationConfig
print(LightningConfig(module="m:C", monitor="val_loss").checkpoint_config()["checkpoint_score_attribute"])
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "val_loss"


def _reports(rows):
    return [{"time": float(i), "metrics": m, "checkpoint_path": None} for i, m in enumerate(rows)]


def test_learning_curve_groups_losses_and_scores_by_epoch():
    reports = _reports(
        [
            {"epoch": 0, "step": 10, "train_loss_step": 0.9, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 0.1},
            {"epoch": 1, "step": 20, "train_loss_step": 0.5, "val_loss": 0.6, "val_accuracy": 0.8, "lr": 0.1},
        ]
    )
    assert learning_curve_panels(reports) == ("epoch", [("loss", ["val_loss"]), ("score", ["val_accuracy"])])
    png = learning_curve_png(reports, "run")
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    # No epoch in every report: the x axis is the report number; no loss or score: the other metrics.
    assert learning_curve_panels(_reports([{"reward": 1.0}, {"reward": 2.0, "epoch": 1}])) == (
        "report",
        [("metrics", ["reward"])],
    )
    assert learning_curve_png(_reports([{"epoch": 0, "note": "text"}]), "run") is None


def test_learning_curve_is_skipped_with_a_note_without_matplotlib(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert learning_curve_png(_reports([{"epoch": 0, "loss": 1.0}]), "run") is None
    assert "pip install matplotlib" in capsys.readouterr().out


def test_learning_curve_path_crosses_the_seam_and_reaches_xcom():
    from airflow_ray_train.results import manifest_to_xcom

    manifest = ResultManifest(
        status="SUCCEEDED",
        submission_id="s",
        run_name="r",
        run_path="/runs/r",
        manifest_path="/runs/r/m.json",
        learning_curve_path="/runs/r/airflow_ray_train/s/learning_curve.png",
    )
    assert ResultManifest.from_json(manifest.to_json()) == manifest
    xcom = manifest_to_xcom(manifest, job_id="j", submission_id="s", dashboard_url="u", status="SUCCEEDED")
    assert xcom["learning_curve_path"] == "/runs/r/airflow_ray_train/s/learning_curve.png"
    assert (
        manifest_to_xcom(None, job_id="j", submission_id="s", dashboard_url="u", status="FAILED")["learning_curve_path"]
        is None
    )


def test_the_folder_registry_keeps_each_deployed_model_as_a_new_version_in_service(tmp_path):
    from ray_train_examples.model_registry import CHAMPION_FILE, promote

    model = tmp_path / "hf_model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "optimizer.pt", "rng_state_0.pth"):
        (model / name).write_text(name)
    first = promote(tmp_path, "m", str(model), {"acc": 0.9}, "run1")
    assert first["version"] == "v0001" and json.loads((tmp_path / "m" / CHAMPION_FILE).read_text()) == first
    assert sorted(p.name for p in Path(first["path"]).iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "m" / "v0001" / "metrics.json").read_text()) == {"acc": 0.9}
    ckpt = tmp_path / "checkpoint.ckpt"
    ckpt.write_text("weights")
    second = promote(tmp_path, "m", str(ckpt), {"acc": 0.95}, "run2")
    assert second["version"] == "v0002" and Path(second["path"]).read_text() == "weights"
    assert json.loads((tmp_path / "m" / CHAMPION_FILE).read_text())["version"] == "v0002"
