"""The docker-compose stack (docker-compose.yml, docker-compose.gpu.yml, docker/).

Static checks run everywhere: they parse the Compose files and read the Dockerfiles as text, so a stack that
cannot start (a missing Dockerfile, a connection pointing at the wrong service or port, a checkpoint path
the Airflow containers cannot open, versions drifting from the ones the project tests) fails here, on a
machine without Docker. ``docker compose config`` runs too where the Compose CLI is installed (under CI it
must be).

The stack itself runs in test_stack.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from compose_support import (
    AIRFLOW_SERVICES,
    COMPOSE_FILE,
    GPU_COMPOSE_FILE,
    LONG_RUNNING,
    MLFLOW_SERVICE,
    RAY_SERVICES,
    REPO,
    STANDIN_OVERRIDE,
    STANDIN_VARIABLES,
    compose_command,
    in_ci,
)

AIRFLOW_DOCKERFILE = REPO / "docker" / "airflow" / "Dockerfile"
RAY_DOCKERFILE = REPO / "docker" / "ray" / "Dockerfile"
FRAMEWORKS_FILE = REPO / "docker" / "requirements-frameworks.txt"
ENV_EXAMPLE = REPO / ".env.example"
MAKE_ENV = REPO / "docker" / "make_env.py"
EXAMPLE_DAG = "example_ray_train_pytorch"

_VAR = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


def _make_env() -> Any:
    spec = importlib.util.spec_from_file_location("make_env", MAKE_ENV)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: One stack's generated secrets (docker/make_env.py), for the variables the compose file requires.
GENERATED_SECRETS = {name: make() for name, make in _make_env().GENERATED.items()}


# -- helpers --------------------------------------------------------------------------------------------------


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation, with ``env`` (default: nothing set, so every default applies) over the
    secrets docker/make_env.py generates (a required variable with no value fails, as Compose does)."""
    env = {**GENERATED_SECRETS, **(env or {})}

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-"):
            return current if (current if op == ":-" else current is not None) else arg
        if current is None or (op == ":?" and not current):
            raise AssertionError(f"${{{name}}} has no default and is not set" + (f": {arg}" if arg else ""))
        return current

    return _VAR.sub(sub, value)


def deep_merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file into a base file (mappings merge key by key)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return override


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def gpu_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services of ``-f docker-compose.yml -f docker-compose.gpu.yml``."""
    return deep_merge(compose, load(GPU_COMPOSE_FILE))["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes (short or long syntax)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            source, target = interpolate(volume).split(":")[:2]
            mounts[target] = source
    return mounts


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    ports = {}
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports[int(port["target"])] = int(port["published"])
        else:
            *_, host, container = interpolate(str(port)).split(":")
            ports[int(container.split("/")[0])] = int(host)
    return ports


def published_addresses(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[int, str]:
    """container port -> the host address it is published on (Docker's default, every interface, if none)."""
    addresses = {}
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            addresses[int(port["target"])] = port.get("host_ip") or "0.0.0.0"
        else:
            parts = interpolate(str(port), env).split(":")
            addresses[int(parts[-1].split("/")[0])] = parts[0] if len(parts) == 3 else "0.0.0.0"
    return addresses


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S*)\s*$", path.read_text(), flags=re.MULTILINE))


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def project_ray_minor() -> str:
    """The Ray the project's own tests run (the newest the `local` extra admits, installed in .venv): the images'
    Ray should be the same minor. The extra's floor is older (the version matrix covers those clusters)."""
    local = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    spec = next(req for req in local if re.match(r"ray\b", req))
    installed = ".".join(version("ray").split(".")[:2])
    upper = re.search(r"<\s*(\d+)\.(\d+)", spec)
    assert upper, f"no upper bound on ray in {spec!r}"
    assert installed == f"{upper.group(1)}.{int(upper.group(2)) - 1}", f"{installed} is not the newest {spec!r} admits"
    return installed


def image_tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


# -- static checks of the Compose files --------------------------------------------------------------------


def test_the_stack_has_airflow_postgres_and_a_ray_head_and_worker(services):
    assert set(services) == {"postgres", *AIRFLOW_SERVICES, *RAY_SERVICES, MLFLOW_SERVICE}


def test_airflow_tracks_every_training_on_the_stacks_mlflow_server_which_allows_its_service_name(services):
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__RAY_TRAIN__MLFLOW_CONN_ID"] == "mlflow_default"
    connection = json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    assert connection["conn_type"] == "mlflow"
    host = urlsplit(connection["host"])
    assert host.hostname == MLFLOW_SERVICE and host.port == 5000
    command = " ".join(services[MLFLOW_SERVICE]["command"])
    assert "--port 5000" in command and f"{MLFLOW_SERVICE}:5000" in command  # --allowed-hosts: MLflow's default
    # refuses a Host header that is not localhost or a private address, and the containers use the service name.
    assert services["airflow-scheduler"]["depends_on"][MLFLOW_SERVICE]["condition"] == "service_healthy"


def _mlflow_service_command(services) -> str:
    command = services[MLFLOW_SERVICE]["command"]
    return command[-1] if isinstance(command, list) else command


def test_the_mlflow_service_runs_with_basic_auth_and_its_admin_from_env_example(services, tmp_path):
    """``mlflow server --app-name basic-auth`` from the Ray image (which installs ``mlflow[auth]``, at the version
    the project tests), its users on the shared volume, its admin from MLFLOW_ADMIN_USER / MLFLOW_ADMIN_PASSWORD;
    the auth config is read by the installed MLflow as the server would, and /health (the healthcheck) is the
    route it leaves open."""
    mlflow = services[MLFLOW_SERVICE]
    command = _mlflow_service_command(services)
    assert re.search(r"\bexec mlflow server\b[^&]*--app-name basic-auth\b", command), command
    # The auth app refuses to start without a static Flask secret key; both workers inherit this one.
    assert "export MLFLOW_FLASK_SERVER_SECRET_KEY=" in interpolate(command)

    raw_env = mlflow["environment"]
    assert raw_env["MLFLOW_AUTH_ADMIN_USERNAME"] == "${MLFLOW_ADMIN_USER:-admin}"
    assert raw_env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:-")
    env = env_of(mlflow)
    example = env_example()
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == example["MLFLOW_ADMIN_USER"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == example["MLFLOW_ADMIN_PASSWORD"]
    assert "RAY_AUTH_TOKEN" not in env, "the MLflow server does not need the Ray cluster's token"

    # The auth config is a file of the repository, mounted read-only where MLFLOW_AUTH_CONFIG_PATH points.
    mounts = volume_mounts(mlflow)
    source = mounts[env["MLFLOW_AUTH_CONFIG_PATH"]]
    assert (REPO / source).is_file(), source
    read_only = [v for v in mlflow["volumes"] if isinstance(v, str) and v.endswith(":ro")]
    assert any(v.startswith(f"{source}:{env['MLFLOW_AUTH_CONFIG_PATH']}:") for v in read_only), mlflow["volumes"]
    assert mounts.get("/shared") == "shared", "the users' store lives on the shared volume"

    # The installed MLflow reads it as the server will (mlflow[auth], the tests' extra).
    pytest.importorskip("flask_wtf", reason="needs mlflow[auth] (pip install -e '.[mlflow]')")
    probe = (
        "import json; from mlflow.server.auth import auth_config, is_unprotected_route; "
        "print(json.dumps({'config': auth_config._asdict(), "
        "'open': [p for p in ('/health', '/api/2.0/mlflow/experiments/search', '/') if is_unprotected_route(p)]}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, **env, "MLFLOW_AUTH_CONFIG_PATH": str(REPO / source)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    read = json.loads(result.stdout.strip().splitlines()[-1])
    config = read["config"]
    assert config["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert config["database_uri"] == "sqlite:////shared/mlflow/basic_auth.db"
    assert (config["admin_username"], config["admin_password"]) == (
        example["MLFLOW_ADMIN_USER"],
        example["MLFLOW_ADMIN_PASSWORD"],
    )
    # MLflow refuses to create an admin with a password under 12 characters, or its old public default.
    assert len(config["admin_password"]) >= 12 and config["admin_password"] != "password1234"
    assert read["open"] == ["/health"], read["open"]
    assert any("localhost:5000/health" in part for part in mlflow["healthcheck"]["test"])

    # The image that runs it has the auth extra, at the MLflow the project tests.
    runs = _pip_lines(RAY_DOCKERFILE)
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in runs, runs
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["mlflow"]
    assert f"mlflow[auth]=={dockerfile_args(RAY_DOCKERFILE)['MLFLOW_VERSION']}" in extras, extras


@pytest.mark.parametrize(
    "user_env",
    [{}, {"MLFLOW_ADMIN_USER": "pipeline-admin", "MLFLOW_ADMIN_PASSWORD": "a-fresh-secret-of-24-chars"}],
    ids=["defaults", "from-env"],
)
def test_the_mlflow_connection_logs_in_as_the_admin_the_mlflow_service_creates(services, user_env):
    """AIRFLOW_CONN_MLFLOW_DEFAULT carries the login and password from the same variables as the server's admin,
    so changing them in .env changes both; the hook reads them as basic auth and hands them on to the Ray jobs."""
    from airflow.sdk import Connection

    from airflow_ray_train.hooks.mlflow import settings_from_connection

    def interpolated(service: dict[str, Any]) -> dict[str, str]:
        return {key: interpolate(str(value), user_env) for key, value in service["environment"].items()}

    server = interpolated(services[MLFLOW_SERVICE])
    user, password = server["MLFLOW_AUTH_ADMIN_USERNAME"], server["MLFLOW_AUTH_ADMIN_PASSWORD"]
    if user_env:
        assert (user, password) == (user_env["MLFLOW_ADMIN_USER"], user_env["MLFLOW_ADMIN_PASSWORD"])
    for name in AIRFLOW_SERVICES:
        conn = json.loads(interpolated(services[name])["AIRFLOW_CONN_MLFLOW_DEFAULT"])
        assert (conn["login"], conn["password"]) == (user, password), name

    conn = json.loads(interpolated(services["airflow-scheduler"])["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    extra = conn.pop("extra")
    settings = settings_from_connection(Connection(conn_id="mlflow_default", **conn), extra)
    assert (settings.tracking_uri, settings.username, settings.password, settings.token) == (
        "http://mlflow:5000",
        user,
        password,
        None,
    )
    assert settings.credentials_env() == {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_every_service_has_an_image_or_a_build_whose_dockerfile_exists(variant, services, gpu_services):
    for name, service in (services if variant == "cpu" else gpu_services).items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"
        build = service.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = REPO / build.get("context", ".")
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"
        # A locally built image must never be pulled from a registry under the same name.
        assert service.get("pull_policy") == "build", f"{name}: set pull_policy: build"
        for arg in build.get("args") or {}:
            assert arg in dockerfile_args(dockerfile), f"{name}: build arg {arg} is not an ARG of {dockerfile}"


def _anchored(node: yaml.Node, key: str) -> yaml.Node:
    for key_node, value_node in node.value:
        if key_node.value == key:
            return value_node
    raise KeyError(key)


def _merges(node: yaml.Node) -> list[yaml.Node]:
    return [value for key, value in node.value if key.tag == "tag:yaml.org,2002:merge" or key.value == "<<"]


def test_airflow_services_share_one_image_and_environment_anchor(services):
    root = yaml.compose(COMPOSE_FILE.read_text(), Loader=yaml.SafeLoader)
    common = _anchored(root, "x-airflow-common")
    common_env = _anchored(common, "environment")
    service_nodes = _anchored(root, "services")
    for name in AIRFLOW_SERVICES:
        node = _anchored(service_nodes, name)
        assert any(merged is common for merged in _merges(node)), f"{name} does not merge <<: *airflow-common"
        try:
            env_node = _anchored(node, "environment")
        except KeyError:
            continue  # inherits the common environment as it is
        assert any(merged is common_env for merged in _merges(env_node)), f"{name}: <<: *airflow-common-env"
    # And after YAML's merge: one image, one build, one user, the common environment everywhere.
    first = services[AIRFLOW_SERVICES[0]]
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert (service["image"], service["build"], service["user"]) == (first["image"], first["build"], first["user"])
        common_items = env_of(services["airflow-apiserver"]).items()
        assert common_items <= env_of(service).items(), name
    ray_images = {services[name]["image"] for name in RAY_SERVICES}
    assert len(ray_images) == 1, ray_images


def test_airflow_runs_local_executor_on_postgres_with_low_parallelism(services):
    env = env_of(services["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert int(env["AIRFLOW__CORE__PARALLELISM"]) <= 8
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert db.scheme == "postgresql+psycopg2" and db.hostname == "postgres"
    postgres_env = env_of(services["postgres"])
    assert (db.username, db.password, db.path.lstrip("/")) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_PASSWORD"],
        postgres_env["POSTGRES_DB"],
    )
    # Task runners in the scheduler container reach the Task Execution API of the api-server service.
    execution_api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert execution_api.hostname == "airflow-apiserver" and execution_api.port == 8080
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"], "every component must share one JWT secret"


def test_the_connection_env_var_points_at_the_ray_head_with_the_cluster_token(services):
    from airflow.sdk import Connection

    from airflow_ray_train.hooks.ray_train import settings_from_connection

    env = env_of(services["airflow-scheduler"])
    conn = json.loads(env["AIRFLOW_CONN_RAY_TRAIN_DEFAULT"])
    assert conn["conn_type"] == "ray_train"
    host = urlsplit(conn["host"])
    assert host.hostname == "ray-head" and host.hostname in services
    head = services["ray-head"]
    command = head["command"] if isinstance(head["command"], list) else shlex.split(head["command"])
    dashboard_port = int(next((a.split("=", 1)[1] for a in command if a.startswith("--dashboard-port=")), 8265))
    assert host.port == dashboard_port == 8265
    assert dashboard_port in published_ports(head), "the head does not publish its dashboard port"
    assert "--dashboard-host=0.0.0.0" in command, "the dashboard must listen beyond the head's localhost"

    # The same token on every Ray node, in the connection and in .env.example, with token auth on.
    token = env_of(head)["RAY_AUTH_TOKEN"]
    assert token and conn["password"] == token == env_example()["RAY_AUTH_TOKEN"]
    for name in RAY_SERVICES:
        assert env_of(services[name])["RAY_AUTH_MODE"] == "token", name
        assert env_of(services[name])["RAY_AUTH_TOKEN"] == token, name

    # The hook reads it as the dashboard address and the bearer token.
    settings = settings_from_connection(Connection(conn_id="ray_train_default", **conn), {}, "ray_train_default")
    assert (settings.address, settings.token, settings.embedded) == ("http://ray-head:8265", token, False)


def test_the_shared_volume_has_one_path_in_every_airflow_and_ray_container(compose, services, gpu_services):
    assert "shared" in compose["volumes"]
    paths = set()
    for variant in (services, gpu_services):
        for name in (*AIRFLOW_SERVICES, *RAY_SERVICES):
            targets = [target for target, source in volume_mounts(variant[name]).items() if source == "shared"]
            assert len(targets) == 1, f"{name} does not mount the shared volume"
            paths.update(targets)
    assert len(paths) == 1, f"the shared volume is mounted at different paths: {paths}"
    (shared,) = paths
    for name in AIRFLOW_SERVICES:
        storage = env_of(services[name])["AIRFLOW__RAY_TRAIN__DEFAULT_STORAGE_PATH"]
        assert storage.startswith(shared.rstrip("/") + "/"), f"{name}: checkpoints at {storage}, not under {shared}"
    # Both images create the directory, world-writable, so the volume starts writable from either side, and
    # Airflow runs with the Ray image's uid (1000) so files either side writes stay writable by the other.
    for dockerfile in (AIRFLOW_DOCKERFILE, RAY_DOCKERFILE):
        text = dockerfile.read_text()
        assert re.search(rf"mkdir -p {re.escape(shared)}\b", text) and "chmod -R 0777 /shared" in text, dockerfile
    assert {services[name]["user"] for name in AIRFLOW_SERVICES} == {"1000:0"}


def test_the_dags_folder_is_the_example_dags(services):
    for name in AIRFLOW_SERVICES:
        mounts = volume_mounts(services[name])
        assert mounts.get("/opt/airflow/dags") == "./example_dags", name
    assert (REPO / "example_dags" / f"{EXAMPLE_DAG}.py").is_file()


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_depends_on_names_services_that_exist_and_can_satisfy_the_condition(variant, services, gpu_services):
    stack = services if variant == "cpu" else gpu_services
    graph: dict[str, set[str]] = {}
    for name, service in stack.items():
        depends = service.get("depends_on") or {}
        depends = {dep: {"condition": "service_started"} for dep in depends} if isinstance(depends, list) else depends
        graph[name] = set(depends)
        for dep, spec in depends.items():
            assert dep in stack, f"{name} depends on unknown service {dep}"
            assert dep != name, f"{name} depends on itself"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert (stack[dep].get("healthcheck") or {}).get("test"), f"{name} waits on {dep}: no healthcheck"
            elif condition == "service_completed_successfully":
                assert stack[dep].get("restart", "no") == "no", f"{dep} is one-shot: it must not restart"
            else:
                assert condition == "service_started", condition
    # No cycle: Compose could never start it.
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {name for name, deps in graph.items() if name not in done and deps <= done}
        assert ready, f"dependency cycle among {set(graph) - done}"
        done |= ready
    for name in AIRFLOW_SERVICES[1:]:
        assert stack[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert stack[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert stack["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_long_running_services_have_healthchecks_that_check_the_right_thing(services):
    for name in LONG_RUNNING:
        assert (services[name].get("healthcheck") or {}).get("test"), f"{name} has no healthcheck"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert any("/api/v2/monitor/health" in part for part in services["airflow-apiserver"]["healthcheck"]["test"])
    head_check = services["ray-head"]["healthcheck"]["test"]
    assert head_check[:3] == ["CMD", "python", "-c"]
    compile(head_check[3], "ray-head healthcheck", "exec")
    assert "localhost:8265/api/version" in head_check[3] and "Bearer" in head_check[3]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_published_ports_are_unique_and_include_the_ui_and_the_dashboard(variant, services, gpu_services):
    stack = services if variant == "cpu" else gpu_services
    host_ports = [port for service in stack.values() for port in published_ports(service).values()]
    assert len(host_ports) == len(set(host_ports)), f"a host port is published twice: {host_ports}"
    assert published_ports(stack["airflow-apiserver"]) == {8080: 8080}
    assert published_ports(stack["ray-head"]) == {8265: 8265}


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_published_ports_listen_on_localhost_unless_the_user_exposes_them(variant, services, gpu_services):
    """The stack's defaults (admin / admin, a known Ray token) are public: by default only this machine may
    reach the UI and the Jobs API; PUBLISH_ADDRESS (documented in .env.example) exposes them."""
    stack = services if variant == "cpu" else gpu_services
    published = {name: published_addresses(service) for name, service in stack.items() if service.get("ports")}
    assert published, "nothing is published"
    for name, addresses in published.items():
        for port, address in addresses.items():
            assert address == "127.0.0.1", f"{name} publishes {port} on {address} by default"
        exposed = published_addresses(stack[name], {"PUBLISH_ADDRESS": "0.0.0.0"})
        assert set(exposed.values()) == {"0.0.0.0"}, f"{name}: PUBLISH_ADDRESS=0.0.0.0 does not expose it"
    assert "PUBLISH_ADDRESS=127.0.0.1" in ENV_EXAMPLE.read_text().splitlines()


def test_env_example_and_the_compose_defaults_agree():
    text = COMPOSE_FILE.read_text()
    defaults: dict[str, set[str]] = {}
    required: set[str] = set()
    for match in _VAR.finditer(text):
        name = match.group("name")
        if name in GENERATED_SECRETS:  # no default anyone could read: required, and the message names the fix
            assert match.group("op") == ":?" and "docker/make_env.py" in match.group("arg"), name
            required.add(name)
        elif name:
            assert match.group("op") in (":-", "-"), f"${{{name}}} needs a default"
            defaults.setdefault(name, set()).add(match.group("arg"))
    example = env_example()
    assert required == set(GENERATED_SECRETS), "the Fernet key, the JWT secret and the API secret key are required"
    assert set(example) == set(defaults) | required, "every variable of docker-compose.yml belongs in .env.example"
    assert all(example[name] == "" for name in required), ".env.example leaves the generated secrets empty"
    for name, values in defaults.items():
        assert values == {example[name]}, f"{name}: compose defaults {values} vs .env.example {example[name]!r}"


def test_airflow_gets_the_generated_fernet_key_jwt_secret_and_api_secret_key(services):
    env = env_of(services["airflow-scheduler"])
    assert env["AIRFLOW__CORE__FERNET_KEY"] == GENERATED_SECRETS["AIRFLOW_FERNET_KEY"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == GENERATED_SECRETS["AIRFLOW_JWT_SECRET"]
    assert env["AIRFLOW__API__SECRET_KEY"] == GENERATED_SECRETS["AIRFLOW_API_SECRET_KEY"]
    with pytest.raises(
        AssertionError, match=re.escape("docker/make_env.py")
    ):  # no .env: Compose stops and names the fix
        interpolate(
            str(services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__FERNET_KEY"]), {"AIRFLOW_FERNET_KEY": ""}
        )


def test_the_gpu_override_puts_the_worker_on_the_ray_gpu_image_with_nvidia_gpus(services, gpu_services):
    override = load(GPU_COMPOSE_FILE)["services"]
    assert set(override) == {"ray-worker"}, "the GPU override changes the worker only"
    worker = gpu_services["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    args = worker["build"]["args"]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(project_ray_minor())}\.\d+-py311-gpu", args["RAY_IMAGE"])
    assert args["TORCH_VARIANT"] == "" and "cpu" not in args["TORCH_INDEX_URL"]
    # Same Dockerfile and context as the CPU worker, another image name (neither overwrites the other).
    assert worker["build"]["dockerfile"] == services["ray-worker"]["build"]["dockerfile"]
    assert worker["build"]["context"] == services["ray-worker"]["build"]["context"]
    assert worker["image"] != services["ray-worker"]["image"] and "gpu" in worker["image"]
    assert gpu_services["ray-head"] == services["ray-head"]


def test_the_init_service_migrates_the_db_and_writes_the_admin_password(services, tmp_path):
    """Runs airflow-init's script as Compose would, against a fresh SQLite DB (the local Airflow install)."""
    import os
    import sys

    init = services["airflow-init"]
    command = [interpolate(part) for part in init["command"]]
    assert command[:2] == ["bash", "-c"] and "airflow db migrate" in command[2]
    env = {
        **os.environ,
        **env_of(init),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
    }
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert json.loads((tmp_path / "passwords.json").read_text()) == {"admin": "admin"}
    assert "airflow-ray-train" in result.stdout
    users = env_of(init)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    assert users == "admin:admin", "user admin with role admin"


# -- the images ----------------------------------------------------------------------------------------------


def test_the_ray_image_is_the_ray_version_the_project_tests(services):
    minor = project_ray_minor()
    args = dockerfile_args(RAY_DOCKERFILE)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(minor)}\.\d+-py311-cpu", args["RAY_IMAGE"]), args["RAY_IMAGE"]
    assert args["RAY_VERSION"] == image_tag(args["RAY_IMAGE"]).split("-")[0]
    assert re.search(r'"ray\[default,train\]==\$\{RAY_VERSION\}"', RAY_DOCKERFILE.read_text())
    for name in RAY_SERVICES:
        assert image_tag(services[name]["image"]).startswith(f"{minor}."), services[name]["image"]


def test_the_airflow_image_is_airflow_3_3_like_the_tested_one(services):
    image = dockerfile_args(AIRFLOW_DOCKERFILE)["AIRFLOW_IMAGE"]
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python3\.11", image)
    assert match, image
    assert match.group(1).startswith("3.3."), image
    installed = ".".join(version("apache-airflow").split(".")[:2])
    assert match.group(1).startswith(f"{installed}."), f"image {image} vs installed apache-airflow {installed}"
    for name in AIRFLOW_SERVICES:
        assert image_tag(services[name]["image"]).startswith(match.group(1)), services[name]["image"]


def _pip_lines(dockerfile: Path) -> str:
    """The RUN instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return "\n".join(line for line in text.splitlines() if line.lstrip().startswith("RUN"))


def test_the_airflow_dockerfile_installs_this_package_and_torch_cpu_but_not_ray():
    text = AIRFLOW_DOCKERFILE.read_text()
    runs = _pip_lines(AIRFLOW_DOCKERFILE)
    assert re.search(r"^COPY .*\bpyproject\.toml\b.* /tmp/airflow-ray-train/$", text, re.MULTILINE)
    assert re.search(r"^COPY .*\bairflow_ray_train /tmp/airflow-ray-train/airflow_ray_train$", text, re.MULTILINE)
    assert re.search(r"pip install [^\n]*\s/tmp/airflow-ray-train(\s|$)", runs), "the provider is not installed"
    assert re.search(r"pip install [^\n]*--index-url https://download\.pytorch\.org/whl/cpu[^\n]*torch==", runs)
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in runs, "pin Airflow in every pip install"
    assert not re.search(r"\bray(\[|==|>=|\s)", runs), "the Airflow side does not need ray"
    assert "requirements-frameworks.txt" in runs


def test_the_ray_dockerfile_installs_torch_and_the_example_frameworks():
    runs = _pip_lines(RAY_DOCKERFILE)
    assert re.search(r'--index-url "\$\{TORCH_INDEX_URL\}"[^\n]*"torch==\$\{TORCH_VERSION\}\$\{TORCH_VARIANT\}"', runs)
    assert dockerfile_args(RAY_DOCKERFILE)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert "-r /tmp/requirements-frameworks.txt" in runs
    assert not re.search(r"apache-airflow|\bairflow-ray-train[\s=\"]", runs), (
        "the cluster needs neither Airflow nor the provider"
    )
    # The runtime: a wheel built from this checkout's runtime/, installed without dependencies.
    text = RAY_DOCKERFILE.read_text()
    assert re.search(r"^COPY (?:--\S+ )*runtime /tmp/airflow-ray-train-runtime$", text, re.MULTILINE)
    assert re.search(r"pip wheel --no-deps [^\n]*/tmp/airflow-ray-train-runtime", runs)
    assert re.search(r"pip install [^\n]*--no-deps [^\n]*airflow_ray_train_runtime-\*\.whl", runs)
    pins = dict(
        line.split("==", 1)
        for line in FRAMEWORKS_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert {"pytorch-lightning", "scikit-learn", "transformers", "accelerate", "datasets", "matplotlib"} <= set(pins)
    assert "torch" not in pins and "ray" not in pins


def test_both_images_use_the_torch_version_the_project_pins():
    airflow_torch = dockerfile_args(AIRFLOW_DOCKERFILE)["TORCH_VERSION"]
    assert airflow_torch == dockerfile_args(RAY_DOCKERFILE)["TORCH_VERSION"]
    makefile_pin = re.search(r"torch==([\d.]+)", (REPO / "Makefile").read_text())
    if makefile_pin:
        assert airflow_torch == makefile_pin.group(1)


@pytest.mark.parametrize("dockerfile", [AIRFLOW_DOCKERFILE, RAY_DOCKERFILE], ids=["airflow", "ray"])
def test_each_build_context_sends_only_what_its_image_copies(dockerfile):
    """Both images build from the repository root; each Dockerfile's .dockerignore lets through exactly what
    it copies (the provider and the runtime; the framework list)."""
    ignore = dockerfile.with_name("Dockerfile.dockerignore").read_text().splitlines()
    assert next(line for line in ignore if line and not line.startswith("#")) == "*", "exclude everything first"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for match in re.finditer(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile.read_text(), re.MULTILINE):
        for source in match.group(1).split():
            name = re.sub(r"\[(.)\]", r"\1", source)  # README.m[d] -> README.md
            assert name in allowed, f"COPY {source}: not let through by Dockerfile.dockerignore"
            if "[" not in source:
                assert (REPO / name).exists(), f"COPY {source}: not in the repository"


# -- Compose itself ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files",
    [[COMPOSE_FILE], [COMPOSE_FILE, GPU_COMPOSE_FILE], [COMPOSE_FILE, STANDIN_OVERRIDE]],
    ids=["cpu", "gpu", "standin"],
)
def test_docker_compose_config_accepts_the_files(files):
    command = compose_command()
    if command is None:
        message = "the Docker Compose CLI is not installed (`docker compose version` failed): cannot run config"
        if in_ci():
            pytest.fail(f"{message}; CI installs it with scripts/docker-engine.sh")
        pytest.skip(message)
    args = [arg for path in files for arg in ("-f", str(path))]
    # The stand-in override names images the tests build; any name parses. The secrets: as make_env.py writes them
    # (and no developer's own .env is read).
    env = {**os.environ, **dict.fromkeys(STANDIN_VARIABLES, "standin:parse-only"), **GENERATED_SECRETS}

    def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        command_line = [*command, *args, "--env-file", os.devnull, "config", "--quiet"]
        return subprocess.run(command_line, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)

    result = config(env)
    assert result.returncode == 0, result.stderr
    # Without them (no .env written yet) Compose refuses to start the stack and names the fix.
    refused = config({key: value for key, value in env.items() if key not in GENERATED_SECRETS})
    assert refused.returncode != 0 and "docker/make_env.py" in refused.stderr, refused.stderr
