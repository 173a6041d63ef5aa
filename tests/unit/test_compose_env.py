"""docker/make_env.py: the compose stack's .env gets a real Fernet key and fresh JWT and API secrets at first
start, private, and a later run keeps what is there (changing a Fernet key would make the stored connections
unreadable)."""

from __future__ import annotations

import importlib.util
import stat
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parents[2]
MAKE_ENV = REPO / "docker" / "make_env.py"
ENV_EXAMPLE = REPO / ".env.example"
SECRETS = ("AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY")


def _values(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def _run(env: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(MAKE_ENV), "--env", str(env)], capture_output=True, text=True, check=True, timeout=30
    )
    return result.stdout


def test_the_first_start_writes_env_with_a_fernet_key_and_fresh_secrets(tmp_path):
    env = tmp_path / ".env"
    assert "generated AIRFLOW_FERNET_KEY, AIRFLOW_JWT_SECRET, AIRFLOW_API_SECRET_KEY" in _run(env)
    values, example = _values(env), _values(ENV_EXAMPLE)
    assert set(values) == set(example)
    assert all(example[name] == "" for name in SECRETS)  # the example holds none
    Fernet(values["AIRFLOW_FERNET_KEY"].encode()).decrypt(Fernet(values["AIRFLOW_FERNET_KEY"].encode()).encrypt(b"x"))
    assert len({values[name] for name in SECRETS}) == 3 and all(len(values[name]) >= 32 for name in SECRETS)
    assert {k: v for k, v in values.items() if k not in SECRETS} == {
        k: v for k, v in example.items() if k not in SECRETS
    }
    assert stat.S_IMODE(env.stat().st_mode) == 0o600

    other = tmp_path / "other.env"
    _run(other)
    assert all(_values(other)[name] != values[name] for name in SECRETS)  # one stack's secrets are its own


def test_a_later_run_keeps_what_env_holds_and_fills_in_what_it_lacks(tmp_path):
    env = tmp_path / ".env"
    env.write_text("RAY_AUTH_TOKEN=mine\nAIRFLOW_FERNET_KEY=kept-key\nAIRFLOW_JWT_SECRET=\n")
    assert "completed" in _run(env)
    values = _values(env)
    assert values["RAY_AUTH_TOKEN"] == "mine" and values["AIRFLOW_FERNET_KEY"] == "kept-key"
    assert values["AIRFLOW_JWT_SECRET"] and values["AIRFLOW_API_SECRET_KEY"]
    before = env.read_text()
    assert "nothing changed" in _run(env) and env.read_text() == before


def test_fernet_keys_are_made_the_way_cryptography_makes_them():
    spec = importlib.util.spec_from_file_location("make_env", MAKE_ENV)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    key = module.fernet_key()
    assert len(key) == len(Fernet.generate_key().decode()) and Fernet(key.encode())
