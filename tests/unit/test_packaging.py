"""Code packages for runtime_env.py_modules: reproducible, content-addressed, and only what the cluster needs."""

from __future__ import annotations

import io
import re
import sys
import zipfile

import pytest

from airflow_ray_train.packaging import CodeLookupError, check_train_func_defined, code_package, runtime_package


def _names(data: bytes) -> list[str]:
    return sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    package = tmp_path / "my_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "digits.py").write_text("import os\n\ndef train_func(config):\n    return config\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "digits.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "single.py").write_text("def train(config):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("my_models", "my_models.digits", "single"):
        sys.modules.pop(name, None)
    return package


def test_runtime_package_is_reproducible_and_holds_only_the_runtime():
    first, second = runtime_package(), runtime_package()
    assert first.data == second.data and first.uri == second.uri
    assert first.uri.startswith("gcs://_ray_pkg_") and first.uri.endswith(".zip")
    names = _names(first.data)
    assert "airflow_ray_train/__init__.py" in names
    assert "airflow_ray_train/runtime/spec.py" in names and "airflow_ray_train/runtime/__main__.py" in names
    # The Airflow side (hooks, operators) stays home; no bytecode travels.
    assert all(n == "airflow_ray_train/__init__.py" or n.startswith("airflow_ray_train/runtime/") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_user_package_is_shipped_whole_and_renamed_when_it_changes(user_code):
    package = code_package("my_models.digits")
    assert package is not None
    assert _names(package.data) == ["my_models/__init__.py", "my_models/digits.py"]
    assert code_package("my_models").uri == package.uri  # same bytes, same name: nothing to upload again
    (user_code / "digits.py").write_text("def train_func(config):\n    return 2\n")
    assert code_package("my_models.digits").uri != package.uri


def test_single_file_module_is_shipped_at_the_zip_top_level(user_code):
    package = code_package("single")
    assert package is not None and _names(package.data) == ["single.py"]


def test_installed_packages_and_the_runtime_are_not_shipped_as_user_code():
    assert code_package("httpx") is None
    assert code_package("airflow_ray_train.runtime.trainer") is None


def test_train_func_is_checked_without_importing_the_users_module(user_code):
    check_train_func_defined("my_models.digits:train_func")
    assert "my_models.digits" not in sys.modules
    with pytest.raises(CodeLookupError, match=re.escape("defines no 'train_fun'. Did you mean 'train_func'")):
        check_train_func_defined("my_models.digits:train_fun")
    with pytest.raises(
        CodeLookupError, match=re.escape("module 'my_modles.digits' is not importable where Airflow runs")
    ):
        check_train_func_defined("my_modles.digits:train_func")
