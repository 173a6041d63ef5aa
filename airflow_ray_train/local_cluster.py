"""The embedded default: a local Ray head with its dashboard, started (or reused) on this machine.

Used when no ``ray_train`` connection is configured, or its host is ``local``. Needs ``ray[default]``
installed next to Airflow (``pip install 'airflow-ray-train[local]'``); nothing else on the Airflow side does.
The head runs ``ray start --head --block`` in its own process group with token auth on and a token of its
own (in a private file, not in the environment jobs inherit), every port on 127.0.0.1, and only the part of
Airflow's environment that Python, Ray and pip need (``HEAD_ENV_NAMES``, ``HEAD_ENV_PREFIXES``, and what
``AIRFLOW_RAY_TRAIN_LOCAL_ENV`` adds): every job inherits the head's environment, and Airflow's holds its
connections, keys and cloud credentials. It is stopped by that group's id, never by name, only after checking
that the process is still that head, and only when it is really gone: its process died, it rejects its own
token, or it left its Jobs API unanswered for ``HEAD_ANSWER_WINDOW_S`` (a dashboard busy with jobs that end
together leaves a request waiting for seconds; replacing the head then would kill every job on it).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
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
STATE_DIR_ENV = "AIRFLOW_RAY_TRAIN_LOCAL_DIR"
#: Names (or shell patterns such as ``AWS_*``), comma-separated, of more variables of the Airflow process's
#: environment for the embedded head and its jobs, beside those it gets by default.
PASS_ENV_ENV = "AIRFLOW_RAY_TRAIN_LOCAL_ENV"
#: The variables of the Airflow process's environment the embedded head (and every job on it) gets: what finds
#: the interpreter, its libraries and the GPUs, the locale, temporary folders, the proxy and CA bundle that pip
#: and downloads need. Credentials never: pass them in ``PASS_ENV_ENV`` or the job's own ``runtime_env``.
HEAD_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TERM",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "CONDA_DEFAULT_ENV",
        "LD_LIBRARY_PATH",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "PIP_CERT",
    }
)
#: Prefixes of the variables it gets too: the locale's, Python's, Ray's own settings, the desktop folders.
HEAD_ENV_PREFIXES = ("LC_", "PYTHON", "RAY_", "XDG_")
#: Ray's variables that are not settings of the head but an address or a token of another cluster.
_NOT_PASSED = frozenset({"RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"})
#: How long a running head may leave its Jobs API unanswered before ``ensure()`` takes it for hung and replaces it.
HEAD_ANSWER_WINDOW_S = 60.0
#: Each health check's timeout, and the pause between two checks of a head that did not answer.
HEALTH_TIMEOUT_S = 3.0
HEALTH_RETRY_S = 2.0
#: The head's token, in its temp dir (mode 0600): jobs find it through ``RAY_AUTH_TOKEN_PATH``.
TOKEN_FILE = "auth_token"
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

    def health(self) -> str:
        """One check of the head's Jobs API with its token: ``"ok"``, ``"rejected"`` (it answered, refusing the
        token: not the head that was recorded), or ``"silent"`` (no answer in time, or an error)."""
        try:
            response = httpx.get(
                f"{self.dashboard_url}/api/version",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=HEALTH_TIMEOUT_S,
            )
        except httpx.HTTPError:
            return "silent"
        if response.status_code == 200:
            return "ok"
        return "rejected" if response.status_code in (401, 403) else "silent"

    def healthy(self) -> bool:
        """Whether the head's Jobs API answers one check with its token."""
        return self.health() == "ok"

    def answers_within(self, window: float) -> bool:
        """Whether the running head answers within ``window`` seconds: checked again while it is silent (logging
        as it waits), given up at once when it rejects its token or its process ends."""
        deadline = time.monotonic() + window
        while True:
            health = self.health()
            if health == "ok":
                return True
            left = deadline - time.monotonic()
            if health == "rejected" or left <= 0 or not self.is_running():
                return False
            log.warning(
                "The embedded Ray head (pid %s, %s) does not answer; its process runs, so it is given up to %.0f s "
                "more before it is replaced",
                self.pid,
                self.dashboard_url,
                left,
            )
            time.sleep(min(HEALTH_RETRY_S, left))


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


def head_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The part of ``environ`` the head and its jobs get (see ``HEAD_ENV_NAMES``), with the variables
    ``AIRFLOW_RAY_TRAIN_LOCAL_ENV`` names."""
    extra = [name.strip() for name in environ.get(PASS_ENV_ENV, "").split(",") if name.strip()]

    def passed(key: str) -> bool:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in extra):
            return True
        return key not in _NOT_PASSED and (key in HEAD_ENV_NAMES or key.startswith(HEAD_ENV_PREFIXES))

    return {key: value for key, value in environ.items() if passed(key)}


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
    cmd = _head_command(ray_cli, temp_dir, dash_port, ports, num_cpus, num_gpus)
    env = head_environment(os.environ)
    # Jobs run `python ...`, resolved through the raylet's PATH: put the head's interpreter first.
    env["PATH"] = f"{python_dir}{os.pathsep}{env.get('PATH', '')}"
    token_path = os.path.join(temp_dir, TOKEN_FILE)
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path, **(extra_env or {})})
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
    _wait_until_serving(head, process, timeout)
    return head


def _head_command(
    ray_cli: str, temp_dir: str, dash_port: int, ports: dict[str, int], num_cpus: int | None, num_gpus: int | None
) -> list[str]:
    """``ray start --head --block`` with the dashboard on loopback and every port chosen here."""
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
    return cmd


def _wait_until_serving(head: RayHead, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until the new head's Jobs API answers; stop it and raise, with its log's tail, if it never does."""
    log_path = str(head.log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = Path(log_path).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"`ray start --head` exited with {process.returncode}; its log ({log_path}):\n{tail}")
        if head.healthy():
            return
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
        """The head recorded in the state file, if its process runs and it does not reject its token (one that is
        slow to answer right now is still the running head)."""
        head = self._recorded()
        return head if head is not None and head.is_running() and head.health() != "rejected" else None

    def _record(self, head: RayHead) -> None:
        """Write the state file private from its first byte (it holds the head's token), then move it in."""
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(asdict(head)))
        os.replace(tmp, self.state_file)

    def ensure(self, num_cpus: int | None = None) -> RayHead:
        """Reuse the running embedded head, or start one and record it. The recorded head is replaced only when
        it is really gone: its process ended, it rejects its token, or it left every check unanswered for
        ``HEAD_ANSWER_WINDOW_S``; a hung one is stopped first, not left behind."""
        with self._locked():
            recorded = self._recorded()
            if recorded is not None and recorded.is_running():
                if recorded.answers_within(HEAD_ANSWER_WINDOW_S):
                    return recorded
                log.warning(
                    "The embedded Ray head (pid %s) rejects its token or left its Jobs API unanswered for %.0f s; "
                    "stopping it and starting another",
                    recorded.pid,
                    HEAD_ANSWER_WINDOW_S,
                )
                recorded.stop()
            elif recorded is not None:
                log.warning("The embedded Ray head (pid %s) is not running any more; starting another", recorded.pid)
            if recorded is not None:
                shutil.rmtree(recorded.temp_dir, ignore_errors=True)
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
