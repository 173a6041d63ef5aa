"""The embedded default: a local Ray head with its dashboard, started (or reused) on this machine.

Used when no ``ray_train`` connection is configured, or its host is ``local``. Needs ``ray[default]``
installed next to Airflow (``pip install 'airflow-ray-train[local]'``); nothing else on the Airflow side does.
The head runs ``ray start --head --block`` in its own process group with token auth on and a token of its
own; it is stopped by that group's id, never by name, so it cannot touch another Ray cluster on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

DEFAULT_DASHBOARD_PORT = 8265
STATE_DIR_ENV = "AIRFLOW_RAY_TRAIN_LOCAL_DIR"
# Port flags of `ray start` that default to fixed numbers: each gets a free port so two local clusters
# (a user's and a test's) never collide.
_PORT_FLAGS = (
    "--port",
    "--node-manager-port",
    "--object-manager-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


@dataclass(frozen=True)
class RayHead:
    """A running local head: where its dashboard is, its token, and the process group to stop."""

    dashboard_url: str
    gcs_address: str
    token: str
    pid: int
    temp_dir: str
    log_file: str

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the head's process group (``ray start --block`` then stops its raylet and GCS)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(self.pid):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def healthy(self) -> bool:
        try:
            response = httpx.get(
                f"{self.dashboard_url}/api/version", headers={"Authorization": f"Bearer {self.token}"}, timeout=3
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it can be bound on loopback, else a free port the OS picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port")


def ray_executable() -> str:
    """The ``ray`` CLI of the interpreter running Airflow, so jobs run with the same Python and packages."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise RuntimeError(
            "The embedded local Ray cluster needs Ray installed next to Airflow. "
            "Fix: pip install 'airflow-ray-train[local]' (ray[default,train] and torch), "
            "or configure the 'ray_train_default' connection with your cluster's dashboard address."
        )
    return found


def start_ray_head(
    *,
    temp_dir: str,
    token: str,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard_port: int | None = None,
    log_file: str | None = None,
    timeout: float = 120.0,
    extra_env: dict[str, str] | None = None,
) -> RayHead:
    """Start ``ray start --head --block`` in its own session and wait until its Jobs API answers."""
    os.makedirs(temp_dir, exist_ok=True)
    dash_port = free_port(dashboard_port)
    ports = {flag: free_port() for flag in _PORT_FLAGS}
    cmd = [
        ray_executable(),
        "start",
        "--head",
        "--block",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *[f"{flag}={port}" for flag, port in ports.items()],
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    # Jobs run `python ...`, resolved through the raylet's PATH: put this interpreter first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **(extra_env or {})})
    log_path = log_file or os.path.join(temp_dir, "ray_head.log")
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    head = RayHead(
        dashboard_url=f"http://127.0.0.1:{dash_port}",
        gcs_address=f"127.0.0.1:{ports['--port']}",
        token=token,
        pid=process.pid,
        temp_dir=temp_dir,
        log_file=log_path,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = Path(log_path).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"`ray start --head` exited with {process.returncode}; its log ({log_path}):\n{tail}")
        if head.healthy():
            return head
        time.sleep(0.5)
    head.stop()
    raise RuntimeError(f"the local Ray head did not serve its dashboard within {timeout:.0f} s; see {log_path}")


class LocalRayCluster:
    """The embedded cluster's state (``cluster.json``) lives in ``state_dir``; a file lock keeps two tasks
    that start at once from starting two heads."""

    def __init__(self, state_dir: str | None = None) -> None:
        default = Path.home() / ".airflow_ray_train" / "local"
        self.state_dir = Path(state_dir or os.environ.get(STATE_DIR_ENV) or default)
        self.state_file = self.state_dir / "cluster.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "cluster.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def running(self) -> RayHead | None:
        """The head recorded in the state file, if it still answers."""
        try:
            head = RayHead(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return head if _group_alive(head.pid) and head.healthy() else None

    def ensure(self, num_cpus: int | None = None) -> RayHead:
        """Reuse the running embedded head, or start one and record it."""
        with self._locked():
            running = self.running()
            if running is not None:
                return running
            # Short: Ray's unix socket paths under the temp dir must stay under ~107 characters.
            temp_dir = tempfile.mkdtemp(prefix="art_ray_")
            head = start_ray_head(
                temp_dir=temp_dir,
                token=secrets.token_hex(24),
                num_cpus=num_cpus if num_cpus is not None else max(4, os.cpu_count() or 1),
                dashboard_port=DEFAULT_DASHBOARD_PORT,
                log_file=str(self.state_dir / "ray_head.log"),
            )
            self.state_file.write_text(json.dumps(asdict(head)))
            os.chmod(self.state_file, 0o600)
            print(
                f"airflow-ray-train: started an embedded local Ray head, dashboard {head.dashboard_url} "
                f"(pid {head.pid}, state {self.state_file}); stop it with "
                f"`python -m airflow_ray_train.local_cluster stop`",
                flush=True,
            )
            return head

    def stop(self) -> bool:
        """Stop the recorded head, if any. Returns whether one was running."""
        with self._locked():
            try:
                head = RayHead(**json.loads(self.state_file.read_text()))
            except (OSError, ValueError, TypeError):
                return False
            head.stop()
            self.state_file.unlink(missing_ok=True)
            shutil.rmtree(head.temp_dir, ignore_errors=True)
            return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cluster = LocalRayCluster()
    if args == ["start"]:
        head = cluster.ensure()
        print(f"dashboard {head.dashboard_url}, pid {head.pid}")
        return 0
    if args == ["stop"]:
        print("stopped" if cluster.stop() else "no embedded Ray head was running")
        return 0
    if args == ["status"]:
        running = cluster.running()
        print(f"running: dashboard {running.dashboard_url}, pid {running.pid}" if running else "not running")
        return 0
    print("usage: python -m airflow_ray_train.local_cluster start|stop|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
