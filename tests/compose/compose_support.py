"""What the compose tests and their conftest share: where the Compose files are, whether Docker runs, and one
Compose project driven through the ``docker compose`` CLI."""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_COMPOSE_FILE = REPO / "docker-compose.gpu.yml"
#: The tests' override: the stand-in base images, the test DAGs, a stack sized for 2 cores.
STANDIN_OVERRIDE = REPO / "tests" / "compose" / "docker-compose.standin.yml"
STANDIN_BUILD = REPO / "docker" / "standin" / "build.sh"
#: What STANDIN_BUILD prints (KEY=tag) and STANDIN_OVERRIDE reads.
STANDIN_VARIABLES = ("STANDIN_AIRFLOW_IMAGE", "STANDIN_RAY_IMAGE", "STANDIN_POSTGRES_IMAGE")
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)
RAY_SERVICES = ("ray-head", "ray-worker")
MLFLOW_SERVICE = "mlflow"
#: airflow-init runs once and exits; the others run and report healthy.
ONE_SHOT = ("airflow-init",)
LONG_RUNNING = ("postgres", *AIRFLOW_SERVICES[1:], *RAY_SERVICES, MLFLOW_SERVICE)
ENGINE_SETUP = "scripts/docker-engine.sh"
LOG_LINES_ON_FAILURE = 40


def in_ci() -> bool:
    """Under CI the stack must run: a skip there would hide a broken stack."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _runs(cmd: list[str], timeout: float = 30) -> tuple[bool, str]:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    output = (result.stderr or result.stdout).strip().splitlines()
    return result.returncode == 0, output[-1] if output else f"exit code {result.returncode}"


@functools.cache
def compose_command() -> list[str] | None:
    """``docker compose`` (the v2 plugin) where it answers; else None. Compose v1 (``docker-compose`` 1.x)
    rejects the compose file's top-level ``name:``."""
    if shutil.which("docker") and _runs(["docker", "compose", "version"])[0]:
        return ["docker", "compose"]
    return None


@functools.cache
def docker_unavailable_reason() -> str | None:
    """Why the stack cannot run here, or None when a Docker engine answers and Compose v2 is installed."""
    if not shutil.which("docker"):
        return f"no `docker` CLI on this machine (as root on Debian 12: {ENGINE_SETUP})"
    ok, detail = _runs(["docker", "info"])
    if not ok:
        return f"no Docker engine runs here (`docker info` failed: {detail}; as root on Debian 12: {ENGINE_SETUP})"
    if compose_command() is None:
        return f"the Docker Compose v2 plugin is not installed (`docker compose version` failed; see {ENGINE_SETUP})"
    try:
        import pytest_docker  # noqa: F401
    except ImportError:
        return "pytest-docker is not installed (pip install -e '.[dev]')"
    return None


class StackError(AssertionError):
    """The stack did not build, start or become healthy; the message carries what Compose and the services said."""


@dataclass
class ComposeProject:
    """One Compose project (files, name, environment) driven through the ``docker compose`` CLI."""

    files: list[Path]
    name: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_command(self) -> list[str]:
        # --env-file /dev/null: the test stack never reads a developer's .env.
        command = [*(compose_command() or ["docker", "compose"]), "--env-file", os.devnull]
        for path in self.files:
            command += ["-f", str(path)]
        return [*command, "-p", self.name]

    @property
    def pytest_docker_command(self) -> str:
        """The command pytest-docker prefixes to its own ``-f ... -p ...`` arguments."""
        return shlex.join([*(compose_command() or ["docker", "compose"]), "--env-file", os.devnull])

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.base_command, *args],
            cwd=REPO,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr)[-6000:]
            raise StackError(f"`docker compose {shlex.join(args)}` exited {result.returncode}:\n{output}")
        return result

    def services(self) -> dict[str, dict[str, Any]]:
        """service -> ``docker compose ps --all`` record (State, Health, ExitCode, ...)."""
        output = self.run("ps", "--all", "--format", "json").stdout.strip()
        if output.startswith("["):  # Compose before 2.21 printed one JSON array
            records = json.loads(output)
        else:
            records = [json.loads(line) for line in output.splitlines() if line.strip()]
        return {record["Service"]: record for record in records}

    def logs(self, service: str, lines: int = LOG_LINES_ON_FAILURE) -> str:
        result = self.run("logs", "--no-color", "--no-log-prefix", "--tail", str(lines), service, check=False)
        return (result.stdout + result.stderr).rstrip()

    def exec(self, service: str, *command: str, timeout: float = 120) -> str:
        return self.run("exec", "-T", service, *command, timeout=timeout).stdout

    def up(self, services: tuple[str, ...], one_shot: tuple[str, ...] = (), timeout: float = 600) -> None:
        """``up --detach``, again while Compose gives up on a dependency that is slow to turn healthy (Docker
        keeps checking it); a failed one-shot service or the deadline ends it with the services' last logs."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.run("up", "--detach", "--no-build", timeout=max(deadline - time.monotonic(), 60))
                return
            except StackError as exc:
                failed = self._failed(one_shot, self.services())
                if failed or time.monotonic() > deadline:
                    raise StackError(f"{exc}\n{self.report(failed or [*one_shot, *services])}") from exc
            time.sleep(10)

    def wait_until_healthy(
        self, services: tuple[str, ...], one_shot: tuple[str, ...] = (), timeout: float = 600
    ) -> None:
        """Wait until every service in ``services`` is running and healthy and every ``one_shot`` one exited 0;
        otherwise raise ``StackError`` with each laggard's state and last log lines."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.services()
            failed = self._failed(one_shot, records)
            pending = [name for name in one_shot if records.get(name, {}).get("State") != "exited"]
            pending += [
                name
                for name in services
                if (records.get(name, {}).get("State"), records.get(name, {}).get("Health")) != ("running", "healthy")
            ]
            if not failed and not pending:
                return
            if failed or time.monotonic() > deadline:
                why = "failed" if failed else f"did not come up within {timeout:.0f} s"
                raise StackError(f"The stack {why}:\n" + self.report(failed or pending, records))
            time.sleep(3)

    @staticmethod
    def _failed(one_shot: tuple[str, ...], records: dict[str, dict[str, Any]]) -> list[str]:
        """The one-shot services that exited with an error."""
        return [
            name
            for name in one_shot
            if records.get(name, {}).get("State") == "exited" and records[name].get("ExitCode") != 0
        ]

    def report(self, names: list[str], records: dict[str, dict[str, Any]] | None = None) -> str:
        """Each named service's state and its last log lines."""
        records = records if records is not None else self.services()
        parts = []
        for name in names:
            record = records.get(name, {})
            state = record.get("Status") or record.get("State") or "not created"
            parts.append(f"--- {name}: {state}; its last {LOG_LINES_ON_FAILURE} log lines:\n{self.logs(name)}")
        return "\n".join(parts)
