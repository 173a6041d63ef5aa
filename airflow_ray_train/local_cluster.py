"""The embedded default: a local Ray head with its dashboard, started (or reused) on this machine.

Used when no ``ray_train`` connection is configured, or its host is ``local``. Needs ``ray[default]``
installed next to Airflow (``pip install 'airflow-ray-train[local]'``); nothing else on the Airflow side does.
The head runs ``ray start --head --block`` in its own process group with token auth on and a token of its
own, every port on 127.0.0.1, and none of Airflow's environment (its secrets would reach every job). It is
stopped by that group's id, never by name, and only after checking that the process is still that head.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

log = logging.getLogger(__name__)

DEFAULT_DASHBOARD_PORT = 8265
_AIRFLOW_ENV_PREFIXES = ("AIRFLOW", "_AIRFLOW")
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
    token: str = field(repr=False)
    pid: int = 0
    temp_dir: str = ""
    log_file: str = ""

    def is_running(self) -> bool:
        """Whether ``pid`` is still this head's ``ray start`` (a recorded pid may belong to another process
        by now)."""
        try:
            cmdline = psutil.Process(self.pid).cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
        return "start" in cmdline and "--head" in cmdline and f"--temp-dir={self.temp_dir}" in cmdline

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the head's process group (``ray start --block`` then stops its raylet and GCS), if the
        recorded process is still this head."""
        if not self.is_running():
            log.info("The recorded Ray head (pid %s) is not running any more; nothing to stop", self.pid)
            return
        stop_group(self.pid, timeout)

    def healthy(self) -> bool:
        """Whether the head's Jobs API answers with its token."""
        try:
            response = httpx.get(
                f"{self.dashboard_url}/api/version", headers={"Authorization": f"Bearer {self.token}"}, timeout=3
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM a process group, then SIGKILL what is left of it after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def group_alive(pgid: int) -> bool:
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


def free_ports(count: int, besides: int = 0) -> list[int]:
    """``count`` distinct free ports, none of them ``besides``: each socket stays bound until all are picked
    (one at a time, the OS may hand back the same port twice)."""
    with contextlib.ExitStack() as stack:
        picked: list[int] = []
        while len(picked) < count:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port != besides:
                picked.append(port)
        return picked


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
    ray_cli: str | None = None,
) -> RayHead:
    """Start ``ray start --head --block`` in its own session and wait until its Jobs API answers.

    ``ray_cli``: the ``ray`` executable to start (default: the one beside this interpreter). Its folder goes
    first on the head's PATH, so jobs run the ``python`` of the same environment. A Ray without token auth
    ignores ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``: the head then answers every token."""
    os.makedirs(temp_dir, exist_ok=True)
    python_dir = Path(ray_cli).parent if ray_cli else Path(sys.executable).parent
    ray_cli = ray_cli or ray_executable()
    dash_port = free_port(dashboard_port)
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS), besides=dash_port), strict=True))
    cmd = [
        ray_cli,
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
    # Jobs inherit the head's environment: none of Airflow's (connections, keys, secrets) goes to them.
    env = {k: v for k, v in os.environ.items() if not k.startswith(_AIRFLOW_ENV_PREFIXES)}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    # Jobs run `python ...`, resolved through the raylet's PATH: put the head's interpreter first.
    env["PATH"] = f"{python_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **(extra_env or {})})
    # A one-machine cluster: Ray then takes 127.0.0.1 as the node's address, so its servers listen on
    # loopback only (`ray start --node-ip-address=127.0.0.1` is turned into the machine's address).
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
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

    def _recorded(self) -> RayHead | None:
        try:
            return RayHead(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> RayHead | None:
        """The head recorded in the state file, if it still answers."""
        head = self._recorded()
        return head if head is not None and head.is_running() and head.healthy() else None

    def _record(self, head: RayHead) -> None:
        """Write the state file private from its first byte (it holds the head's token), then move it in."""
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(asdict(head)))
        os.replace(tmp, self.state_file)

    def ensure(self, num_cpus: int | None = None) -> RayHead:
        """Reuse the running embedded head, or start one and record it. A recorded head that no longer
        answers is stopped first (if it is still that head), not left behind."""
        with self._locked():
            running = self.running()
            if running is not None:
                return running
            stale = self._recorded()
            if stale is not None:
                log.warning(
                    "The embedded Ray head (pid %s) does not answer; stopping it and starting another", stale.pid
                )
                stale.stop()
                shutil.rmtree(stale.temp_dir, ignore_errors=True)
            # Short: Ray's unix socket paths under the temp dir must stay under ~107 characters.
            temp_dir = tempfile.mkdtemp(prefix="art_ray_")
            head = start_ray_head(
                temp_dir=temp_dir,
                token=secrets.token_hex(24),
                num_cpus=num_cpus if num_cpus is not None else max(4, os.cpu_count() or 1),
                dashboard_port=DEFAULT_DASHBOARD_PORT,
                log_file=str(self.state_dir / "ray_head.log"),
            )
            self._record(head)
            log.info(
                "Started an embedded local Ray head, dashboard %s (pid %s, state %s); stop it with "
                "`python -m airflow_ray_train.local_cluster stop`",
                head.dashboard_url,
                head.pid,
                self.state_file,
            )
            return head

    def stop(self) -> bool:
        """Stop the recorded head, if any. Returns whether one was running."""
        with self._locked():
            head = self._recorded()
            if head is None:
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
