"""Import paths can come from ``dag_run.conf``: what they name is checked to be what the field expects (a
plain function, a LightningModule class, ...) before it is called."""

from __future__ import annotations

import re
import sys

import pytest

from airflow_ray_train_runtime.frameworks import import_class, import_function
from airflow_ray_train_runtime.trainer import TrainFuncImportError, load_train_func

USER_MODULE = """
import lightning_base as pl
from subprocess import run as train_alias


def train_func(config):
    return config


class Model(pl.LightningModule):
    pass


class Data(pl.LightningDataModule):
    pass
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    from airflow_ray_train_runtime.lightning import import_lightning

    monkeypatch.setitem(sys.modules, "lightning_base", import_lightning())
    (tmp_path / "conf_chosen.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("conf_chosen", None)
    return import_lightning()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("subprocess:run", "is subprocess.run, from Python's standard library"),
        ("conf_chosen:train_alias", "is subprocess.run, from Python's standard library"),
        ("json:JSONDecoder", "is the class json.decoder.JSONDecoder, not a function defined with `def`"),
        ("os:system", "is a builtins.builtin_function_or_method, not a function defined with `def`"),
    ],
)
def test_train_func_must_be_a_function_of_the_users_code(user_module, path, message):
    with pytest.raises(TrainFuncImportError, match=re.escape(f"train_func {path!r} {message}. Fix:")):
        load_train_func(path)
    assert load_train_func("conf_chosen:train_func")({"lr": 1}) == {"lr": 1}


def test_compute_metrics_must_be_a_function():
    with pytest.raises(ImportError, match=re.escape("compute_metrics 'os:system' is a builtins.builtin_function")):
        import_function("os:system", "compute_metrics")


def test_lightning_classes_must_be_the_kind_the_field_names(user_module):
    pl = user_module
    assert import_class("conf_chosen:Model", "module", pl.LightningModule).__name__ == "Model"
    with pytest.raises(TypeError, match=r"module 'conf_chosen:Data' is the class conf_chosen\.Data, not a subclass of"):
        import_class("conf_chosen:Data", "module", pl.LightningModule)
    from airflow_ray_train_runtime.lightning import load_module

    with pytest.raises(TypeError, match=r"module 'subprocess:Popen' is the class subprocess\.Popen, not a subclass"):
        load_module("subprocess:Popen", "/nowhere/checkpoint")


def test_no_two_test_modules_share_a_file_name():
    """pytest imports test modules by basename (no packages under tests/): two files of one name fail the
    whole run's collection as soon as both are collected together, as `make test` does."""
    from collections import Counter
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    names = Counter(path.name for path in tests.rglob("test_*.py") if ".venv" not in path.parts)
    assert not [name for name, count in names.items() if count > 1]
