"""Airflow accepts the provider: `airflow providers ...` lists it with its hook and connection type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from airflow_ray_train import __version__, get_provider_info

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def _airflow(*args: str) -> str:
    result = subprocess.run([AIRFLOW, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_provider_info_names_the_distribution():
    info = get_provider_info()
    assert info["package-name"] == "airflow-ray-train"
    assert info["versions"][0] == __version__


def test_airflow_lists_the_provider_and_its_connection_type():
    providers = json.loads(_airflow("providers", "list", "-o", "json"))
    assert any(p["package_name"] == "airflow-ray-train" and p["version"] == __version__ for p in providers)
    hooks = json.loads(_airflow("providers", "hooks", "-o", "json"))
    ray_train = next(h for h in hooks if h["connection_type"] == "ray_train")
    assert ray_train["class"] == "airflow_ray_train.hooks.ray_train.RayTrainHook"
    assert ray_train["package_name"] == "airflow-ray-train"
    assert ray_train["hook_name"] == "Ray Train"
