"""The docker-compose stack's fixtures: when Docker is usable, and pytest-docker's fixtures pointed at the
repository's docker-compose.yml with free host ports and a fresh Ray token.

pytest-docker's ``docker_services`` errors (it does not skip) where no Docker engine runs, so the stack test
is skipped at collection, from ``docker_unavailable_reason()``, before that fixture is ever set up.
"""

from __future__ import annotations

import os
import secrets

import pytest
from compose_support import COMPOSE_FILE, compose_command


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a running Docker engine and Docker Compose (skipped otherwise)")


# -- pytest-docker's fixtures, pointed at this repository's stack (used only by the stack test) ------------


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return " ".join(compose_command() or ["docker", "compose"])


@pytest.fixture(scope="session")
def docker_compose_file() -> list[str]:
    return [str(COMPOSE_FILE)]


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"airflow-ray-train-test-{os.getpid()}"


@pytest.fixture(scope="session")
def compose_env() -> dict[str, str]:
    """Free host ports and fresh secrets for the test stack, exported for Compose's interpolation (they win
    over a developer's .env)."""
    from airflow_ray_train.local_cluster import free_port

    env = {
        "AIRFLOW_HOST_PORT": str(free_port()),
        "RAY_DASHBOARD_HOST_PORT": str(free_port()),
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
    }
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def docker_setup(compose_env: dict[str, str]) -> list[str]:
    # `up --wait` trips over the one-shot airflow-init on some Compose versions: start detached and let
    # the test wait on the services' own health endpoints.
    return ["up --build --detach"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down --volumes --remove-orphans --timeout 30"]
