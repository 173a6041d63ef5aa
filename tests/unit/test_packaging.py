"""Code packages for runtime_env.py_modules: reproducible, content-addressed, and only what the cluster needs."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import pytest

from airflow_ray_train import packaging
from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.packaging import (
    CodeLookupError,
    Package,
    check_train_func_defined,
    code_package,
    runtime_package,
)
from airflow_ray_train_runtime.spec import TrainSpec


def _names(package: Package | None) -> list[str]:
    assert package is not None
    return sorted(package.archive().namelist())


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
    assert first.file is not second.file and first.read_bytes() == second.read_bytes()
    assert first.uri == second.uri and first.uri.startswith("gcs://_ray_pkg_") and first.uri.endswith(".zip")
    names = _names(first)
    assert "airflow_ray_train_runtime/spec.py" in names and "airflow_ray_train_runtime/__main__.py" in names
    assert "airflow_ray_train_runtime/VERSION" in names  # its __version__ reads it on the cluster
    # The Airflow side (the provider's package: hooks, operators) stays home; no bytecode travels.
    assert all(n.startswith("airflow_ray_train_runtime/") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_user_package_is_shipped_whole_and_renamed_when_it_changes(user_code):
    package = code_package("my_models.digits")
    assert package is not None
    assert _names(package) == ["my_models/__init__.py", "my_models/digits.py"]
    assert code_package("my_models").uri == package.uri  # same bytes, same name: nothing to upload again
    (user_code / "digits.py").write_text("def train_func(config):\n    return 2\n")
    assert code_package("my_models.digits").uri != package.uri


def test_single_file_module_is_shipped_at_the_zip_top_level(user_code):
    package = code_package("single")
    assert _names(package) == ["single.py"]


def test_installed_packages_and_the_runtime_are_not_shipped_as_user_code():
    assert code_package("httpx") is None
    assert code_package("airflow_ray_train_runtime.trainer") is None


def test_train_func_is_checked_without_importing_the_users_module(user_code):
    check_train_func_defined("my_models.digits:train_func")
    assert "my_models.digits" not in sys.modules
    with pytest.raises(CodeLookupError, match=re.escape("defines no 'train_fun'. Did you mean 'train_func'")):
        check_train_func_defined("my_models.digits:train_fun")
    with pytest.raises(
        CodeLookupError, match=re.escape("module 'my_modles.digits' is not importable where Airflow runs")
    ):
        check_train_func_defined("my_modles.digits:train_func")


def test_the_zip_is_named_by_its_hash_and_its_reads_repeat(user_code):
    package = code_package("my_models")
    assert package is not None
    data = package.read_bytes()
    assert len(data) == package.size and hashlib.sha256(data).hexdigest() == package.sha256
    assert b"".join(package.chunks()) == b"".join(package.chunks()) == data  # an upload can be retried
    assert package.name == f"_ray_pkg_{package.sha256[:32]}.zip"


def test_a_task_process_that_ends_with_os_exit_leaves_no_zip_in_the_temp_folder(tmp_path):
    """Airflow's task processes end with ``os._exit`` (no finalizers): a named temp zip was left per task run."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    code = (
        "import os\n"
        "from airflow_ray_train.packaging import runtime_package, build_zip\n"
        "kept = [runtime_package(), build_zip('spec', [('spec.json', '{}')])]\n"
        "assert all(p.size > 0 for p in kept)\n"
        "os._exit(0)\n"
    )
    env = {**os.environ, "TMPDIR": str(temp)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert sorted(p.name for p in temp.iterdir()) == []


def test_what_leaves_the_package_secrets_checkpoints_data_and_ignored_files_stay_home(user_code, tmp_path, caplog):
    secret = tmp_path / "outside.txt"
    secret.write_text("s3cr3t")
    (user_code / "leak.txt").symlink_to(secret)
    (user_code / "alias.py").symlink_to(user_code / "digits.py")  # stays inside: ships
    (user_code / "server.pem").write_text("-----BEGIN PRIVATE KEY-----")
    (user_code / "model.ckpt").write_bytes(b"\0" * 64)
    (user_code / "data").mkdir()
    (user_code / "data" / "train.csv").write_text("x,y\n")
    (user_code / "labels.csv").write_text("cat,dog\n")
    (user_code / "notes").mkdir()
    (user_code / "notes" / "draft.py").write_text("")
    (user_code / ".rayignore").write_text("notes/\n!labels.csv\n")
    (user_code / "sub").mkdir()
    (user_code / "sub" / "__init__.py").write_text("")
    (user_code / "sub" / "scratch.py").write_text("")
    (user_code / "sub" / ".gitignore").write_text("scratch.py\n")

    assert _names(code_package("my_models")) == [
        "my_models/__init__.py",
        "my_models/alias.py",
        "my_models/digits.py",
        "my_models/labels.csv",  # re-included by the ignore file over the default excludes
        "my_models/sub/__init__.py",
    ]
    assert f"symlink to {secret}, outside" in caplog.text


def test_a_dangling_symlink_is_a_config_error_naming_the_file_and_the_fix(user_code):
    (user_code / "gone.py").symlink_to(user_code / "missing.py")
    fix = re.escape(f"which does not exist. Fix: remove the link, or list it in {user_code / '.rayignore'}.")
    with pytest.raises(CodeLookupError, match=rf"cannot ship {re.escape(str(user_code / 'gone.py'))}: .*{fix}"):
        code_package("my_models")
    # Through the operator it fails the task without retries.
    operator = RayTrainOperator(task_id="t", train_func="my_models.digits:train_func")
    spec = TrainSpec(train_func="my_models.digits:train_func", run_name="r", submission_id="s")
    with pytest.raises(RayTrainConfigError, match=r"gone\.py"):
        operator.packages_to_ship(spec)
    # Listed in the ignore file, it is left out.
    (user_code / ".rayignore").write_text("gone.py\n")
    assert "my_models/gone.py" not in _names(code_package("my_models"))


def test_a_package_over_the_size_cap_fails_naming_its_biggest_files(user_code, monkeypatch):
    monkeypatch.setattr(packaging, "MAX_PACKAGE_BYTES", 8 * 1024)
    (user_code / "big_table.py").write_text("X = 1\n" * 2000)
    (user_code / "vocab.py").write_text("V = 2\n" * 500)
    with pytest.raises(CodeLookupError) as raised:
        code_package("my_models")
    message = str(raised.value)
    assert "holds 14.7 KiB of files to ship, over the 8.0 KiB a code package may hold" in message
    assert "Biggest: big_table.py (11.7 KiB), vocab.py (2.9 KiB)," in message
    assert f"Fix: list data, checkpoints and other large files in {user_code / '.rayignore'}" in message


def test_train_func_bound_anywhere_at_the_top_level_is_found(tmp_path, monkeypatch):
    (tmp_path / "bound_module.py").write_text(
        "def make():\n    return print, print\n\n\ntrain_a, train_b = make()\n"
        "try:\n    from json import dumps as train_c\nexcept ImportError:\n    train_c = None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("train_a", "train_b", "train_c"):
        check_train_func_defined(f"bound_module:{name}")
    with pytest.raises(CodeLookupError, match="defines no 'train_d'"):
        check_train_func_defined("bound_module:train_d")


def test_a_standard_library_function_is_refused_as_train_func():
    with pytest.raises(CodeLookupError, match=r"'subprocess:run' is in Python's standard library.*Fix:"):
        check_train_func_defined("subprocess:run")


#: Files that likely hold credentials, each with the name a user gives it (the issue's examples first).
SECRET_FILES = [
    "prod.env",
    "gcp-sa.json",
    "secrets.yaml",
    "terraform.tfstate",
    "kubeconfig",
    "airflow.cfg",
    "token.txt",
    ".env",
    ".env.production",
    "staging.env",
    "terraform.tfstate.backup",
    "prod.tfvars",
    "my-project-service-account.json",
    "application_default_credentials.json",
    "client_secret_123.json",
    "credentials",
    "credentials.json",
    "aws_credentials.json",
    "secrets.toml",
    "db_secret.yaml",
    "hf_token.txt",
    "token.json",
    "api.token",
    "server.pem",
    "tls.key",
    "id_rsa",
    "id_ed25519.pub",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    "config/kubeconfig",
    "deploy/prod.env",
    ".aws/credentials",
]


def test_likely_secret_files_are_left_out_by_default_and_a_rayignore_line_adds_to_the_list(user_code):
    for name in SECRET_FILES:
        path = user_code / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("s3cr3t")
    # What must still ship: code and files whose names only look alike.
    for name in ("tokenizer.py", "tokenizer.json", "special_tokens_map.json", "env.py", "secret_sharing.py"):
        (user_code / name).write_text("")
    (user_code / "config").mkdir(exist_ok=True)
    (user_code / "config" / "settings.py").write_text("")
    (user_code / "vault.txt").write_text("s3cr3t")
    (user_code / ".rayignore").write_text("vault.txt\n")  # the user's own addition to the list
    names = _names(code_package("my_models"))
    assert [name for name in names if "s3cr3t" in (user_code.parent / name).read_text()] == []
    assert names == [
        "my_models/__init__.py",
        "my_models/config/settings.py",
        "my_models/digits.py",
        "my_models/env.py",
        "my_models/secret_sharing.py",
        "my_models/special_tokens_map.json",
        "my_models/tokenizer.json",
        "my_models/tokenizer.py",
    ]


def test_a_rayignore_line_ships_a_file_the_secret_defaults_leave_out(user_code):
    (user_code / "secrets.py").write_text("NAME = 'not a secret'\n")
    assert "my_models/secrets.py" not in _names(code_package("my_models"))
    (user_code / ".rayignore").write_text("!secrets.py\n")
    assert "my_models/secrets.py" in _names(code_package("my_models"))
