"""The docker-compose stack's fixtures: the stand-in base images, and the stack itself brought up with
pytest-docker from docker-compose.yml plus the tests' override, with free host ports and fresh secrets.

Where no Docker engine answers, the stack tests skip with the reason (pytest-docker would error), except under
CI, where they fail: a skip there would hide a broken stack.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from compose_support import (
    COMPOSE_FILE,
    LONG_RUNNING,
    ONE_SHOT,
    STANDIN_BUILD,
    STANDIN_OVERRIDE,
    STANDIN_VARIABLES,
    ComposeProject,
    StackError,
    docker_unavailable_reason,
    in_ci,
)
from cryptography.fernet import Fernet

#: A cold stand-in build (debootstrap, Airflow, Ray, torch) takes about 5 minutes here.
STANDIN_BUILD_TIMEOUT = 1800
#: A cold build of the project's images (torch and the example frameworks twice) takes about 6 minutes here.
IMAGE_BUILD_TIMEOUT = 2400
UP_TIMEOUT = 900
HEALTHY_TIMEOUT = 900


@pytest.fixture(scope="module")
def docker_available() -> None:
    """Skip (fail under CI) where the stack cannot run."""
    reason = docker_unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI must run the compose stack, but {reason}")
    pytest.skip(f"compose stack not started: {reason}")


@pytest.fixture(scope="module")
def standin_images(docker_available: None) -> dict[str, str]:
    """STANDIN_*_IMAGE -> tag, from docker/standin/build.sh (which keeps images built from the same inputs)."""
    result = subprocess.run(
        ["bash", str(STANDIN_BUILD)], capture_output=True, text=True, timeout=STANDIN_BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise StackError(f"{STANDIN_BUILD} exited {result.returncode}:\n{result.stderr[-6000:]}")
    images = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert set(images) == set(STANDIN_VARIABLES), result.stdout
    return images


@pytest.fixture(scope="module")
def compose_project(standin_images: dict[str, str]) -> ComposeProject:
    """The test stack: its own project name, free host ports and fresh secrets (the developer's .env is not read)."""
    from airflow_ray_train.local_cluster import free_ports

    airflow_port, dashboard_port, mlflow_port = free_ports(3)

    env = {
        **standin_images,
        "AIRFLOW_HOST_PORT": str(airflow_port),
        "RAY_DASHBOARD_HOST_PORT": str(dashboard_port),
        "MLFLOW_HOST_PORT": str(mlflow_port),
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
        # Not the default user name either: the connection must follow the variable, not happen to say "admin".
        "MLFLOW_ADMIN_USER": "stack-admin",
        "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(24),
    }
    return ComposeProject([COMPOSE_FILE, STANDIN_OVERRIDE], f"airflow-ray-train-test-{os.getpid()}", env)


@pytest.fixture(scope="module")
def running_stack(compose_project: ComposeProject) -> Iterator[ComposeProject]:
    """The stack built, started and healthy; ``docker compose down --volumes`` always runs after it (pytest-docker),
    whether it came up or not."""
    from pytest_docker.plugin import get_docker_services

    project = compose_project
    with pytest.MonkeyPatch.context() as env:
        # pytest-docker runs Compose with this process's environment: the variables the files interpolate.
        for key, value in project.env.items():
            env.setenv(key, value)
        with get_docker_services(
            project.pytest_docker_command,
            [str(path) for path in project.files],
            project.name,
            docker_setup=[],
            docker_cleanup=["down --volumes --remove-orphans --timeout 30"],
        ):
            project.run("build", timeout=IMAGE_BUILD_TIMEOUT)
            project.up(LONG_RUNNING, one_shot=ONE_SHOT, timeout=UP_TIMEOUT)
            project.wait_until_healthy(LONG_RUNNING, one_shot=ONE_SHOT, timeout=HEALTHY_TIMEOUT)
            yield project
