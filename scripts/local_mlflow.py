"""A real MLflow tracking server on this machine, for the tests and `make demo`: ``mlflow server`` with a SQLite
backend store and a local artifact root (artifacts proxied through the server, so the Ray side uploads over
HTTP), basic auth on with an admin password of its own, on 127.0.0.1 and a free port, in its own process
group, stopped by that group's id. Needs ``mlflow[auth]`` (``pip install -e ".[mlflow]"``).

``python scripts/local_mlflow.py stop ROOT`` stops the server whose folder is ROOT (`make demo` leaves its
server running, so its UI can be opened after the demo).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from airflow_ray_train.local_cluster import free_port, stop_group

ADMIN = "admin"
STATE_FILE = "server.json"
PASSWORD_FILE = "admin_password"


@dataclass(frozen=True)
class MlflowServer:
    """A running server: its address, its admin's credentials, its folder and the process group to stop."""

    url: str
    username: str
    password: str = field(repr=False)
    root: Path
    pid: int
    log_file: Path

    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/health", timeout=3).status_code == 200
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server's process group (uvicorn and its workers), SIGKILL what is left after ``timeout``."""
        (self.root / STATE_FILE).unlink(missing_ok=True)
        stop_group(self.pid, timeout)


def running_server(root: Path) -> MlflowServer | None:
    """The server recorded in ``root``, if it still answers."""
    try:
        state = json.loads((root / STATE_FILE).read_text())
        password = (root / PASSWORD_FILE).read_text().strip()
        server = MlflowServer(
            state["url"], state["username"], password, root, int(state["pid"]), Path(state["log_file"])
        )
    except (OSError, ValueError, KeyError):
        return None
    return server if server.healthy() else None


def _admin_password(root: Path) -> str:
    """The admin's password, made on the first start: the auth store keeps the first one it was given."""
    path = root / PASSWORD_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(16))
    return path.read_text().strip()


def start_mlflow_server(root: Path, *, port: int | None = None, timeout: float = 300.0) -> MlflowServer:
    """Start ``mlflow server`` with its store, artifacts and log under ``root`` (on ``port`` if it is free) and
    wait until it answers."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port(port)
    password = _admin_password(root)
    auth_config = root / "basic_auth.ini"
    auth_config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\nadmin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "_AIRFLOW", "MLFLOW"))}
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(auth_config),
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
        # The GenAI job runner (huey workers) is not needed to track training.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--app-name=basic-auth",
        f"--backend-store-uri=sqlite:///{root / 'mlflow.db'}",
        f"--artifacts-destination={root / 'artifacts'}",
        "--host=127.0.0.1",
        f"--port={port}",
        "--workers=1",
    ]
    log_file = root / "mlflow_server.log"
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", ADMIN, password, root, process.pid, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"`mlflow server` exited with {process.returncode}; its log ({log_file}):\n{tail}")
        if server.healthy():
            state = {"url": server.url, "username": ADMIN, "pid": server.pid, "log_file": str(log_file)}
            (root / STATE_FILE).write_text(json.dumps(state))
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the MLflow server did not answer within {timeout:.0f} s; see {log_file}")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "stop":
        server = running_server(Path(argv[1]).resolve())
        if server is None:
            print(f"no MLflow server recorded in {argv[1]} answers")
            return 0
        server.stop()
        print(f"stopped the MLflow server at {server.url}")
        return 0
    print("usage: python scripts/local_mlflow.py stop ROOT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
