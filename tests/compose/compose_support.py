"""What the compose tests and their conftest share: where the Compose files are, and whether Docker runs."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_COMPOSE_FILE = REPO / "docker-compose.gpu.yml"


def _runs(cmd: list[str], timeout: float = 30) -> tuple[bool, str]:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    output = (result.stderr or result.stdout).strip().splitlines()
    return result.returncode == 0, output[-1] if output else f"exit code {result.returncode}"


@functools.cache
def compose_command() -> list[str] | None:
    """``docker compose`` (the v2 plugin) or a standalone ``docker-compose``, whichever answers; else None."""
    if shutil.which("docker") and _runs(["docker", "compose", "version"])[0]:
        return ["docker", "compose"]
    if shutil.which("docker-compose") and _runs(["docker-compose", "version"])[0]:
        return ["docker-compose"]
    return None


@functools.cache
def docker_unavailable_reason() -> str | None:
    """Why the stack cannot run here, or None when a Docker engine answers and Compose is installed."""
    if not shutil.which("docker"):
        return "no `docker` CLI on this machine"
    ok, detail = _runs(["docker", "info"])
    if not ok:
        return f"no Docker engine runs here (`docker info` failed: {detail})"
    if compose_command() is None:
        return "the Docker Compose plugin is not installed (`docker compose version` failed)"
    try:
        import pytest_docker  # noqa: F401
    except ImportError:
        return "pytest-docker is not installed (pip install -e '.[dev]')"
    return None
