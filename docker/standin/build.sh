#!/usr/bin/env bash
# Stand-in base images for the docker-compose stack test, for machines that cannot pull the official images
# (apache/airflow, rayproject/ray, postgres) but reach Debian's packages and PyPI. Each gives the project's
# Dockerfiles what they rely on from the official image it replaces (see the Dockerfile next to it); the tests
# select them through those Dockerfiles' build args (tests/compose/docker-compose.standin.yml).
#
#   docker/standin/build.sh        # an image already built from the same inputs is kept
#
# Prints the tags as STANDIN_AIRFLOW_IMAGE=..., STANDIN_RAY_IMAGE=..., STANDIN_POSTGRES_IMAGE=... on stdout
# (progress goes to stderr), the variables tests/compose/docker-compose.standin.yml reads.
#
# Made from: Debian 12 (debootstrap, Python 3.11), the machine's CA bundle (pip's `cert`: TLS to the
# registries may pass a proxy only this machine trusts), and the CPU torch wheel from pip's find-links
# (else downloaded from the PyTorch CPU index), at the versions docker/airflow and docker/ray pin.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
prefix=airflow-ray-train-standin
label=org.airflow-ray-train.standin.inputs
suite=bookworm
mirror=http://deb.debian.org/debian
base_packages=python3,python3-venv,ca-certificates

arg_of() { sed -n "s/^ARG $1=//p" "$2" | head -n 1; }
airflow_image=$(arg_of AIRFLOW_IMAGE "$repo/docker/airflow/Dockerfile")
airflow_tag=${airflow_image#*:}
airflow_version=${airflow_tag%%-*}
ray_image=$(arg_of RAY_IMAGE "$repo/docker/ray/Dockerfile")
ray_version=$(arg_of RAY_VERSION "$repo/docker/ray/Dockerfile")
torch_version=$(arg_of TORCH_VERSION "$repo/docker/ray/Dockerfile")

pip_setting() { # $1: environment variable, $2: pip config key
    if [[ -n "${!1:-}" ]]; then echo "${!1}"; else python3 -m pip config get "$2" 2>/dev/null || true; fi
}

ca_bundle=$(pip_setting PIP_CERT global.cert)
ca_bundle=${ca_bundle:-/etc/ssl/certs/ca-certificates.crt}
[[ -f "$ca_bundle" ]] || { echo "standin: no CA bundle at $ca_bundle" >&2; exit 1; }

torch_wheel_name="torch-${torch_version}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
torch_wheel=""
for dir in $(pip_setting PIP_FIND_LINKS global.find-links); do
    [[ -f "$dir/$torch_wheel_name" ]] && torch_wheel="$dir/$torch_wheel_name" && break
done
if [[ -z "$torch_wheel" ]]; then
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/airflow-ray-train-standin"
    torch_wheel="$cache/$torch_wheel_name"
    if [[ ! -f "$torch_wheel" ]]; then
        echo "standin: downloading $torch_wheel_name from the PyTorch CPU index" >&2
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
            --platform manylinux_2_28_x86_64 --index-url https://download.pytorch.org/whl/cpu \
            --dest "$cache" "torch==${torch_version}+cpu"
    fi
fi

# One line per input: what a rebuild must notice (the wheel by name and size: hashing 190 MB is slow).
inputs_of() { # $1: stand-in directory; then build args
    local dir=$1
    shift
    {
        printf '%s\n' "$@"
        cat "$here/build.sh" "$dir"/*
        sha256sum "$ca_bundle" | cut -d' ' -f1
        echo "$torch_wheel_name $(stat -c %s "$torch_wheel")"
        docker image inspect -f '{{.Id}}' "$prefix/debian:$suite"
    } | sha256sum | cut -c1-16
}

is_current() { # $1: tag, $2: inputs
    [[ "$(docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$1" 2>/dev/null)" == "$2" ]]
}

build_base() {
    local tag="$prefix/debian:$suite" inputs rootfs
    inputs=$(echo "$suite $mirror $base_packages" | sha256sum | cut -c1-16)
    if is_current "$tag" "$inputs"; then
        echo "standin: kept $tag" >&2
        return
    fi
    rootfs=$(mktemp -d)
    echo "standin: debootstrap $suite ($base_packages) -> $tag" >&2
    debootstrap --variant=minbase --include="$base_packages" "$suite" "$rootfs" "$mirror" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change "LABEL $label=$inputs" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        --change 'CMD ["bash"]' - "$tag" >/dev/null
    rm -rf "$rootfs"
}

build_standin() { # $1: tag, $2: stand-in directory; then KEY=VALUE build args
    local tag=$1 dir=$2 inputs context log arg
    shift 2
    inputs=$(inputs_of "$dir" "$@")
    if is_current "$tag" "$inputs"; then
        echo "standin: kept $tag" >&2
        return
    fi
    echo "standin: building $tag" >&2
    context=$(mktemp -d)
    log=$(mktemp)
    cp -r "$dir"/. "$context"
    local args=(--build-arg "BASE_IMAGE=$prefix/debian:$suite")
    if grep -q TORCH_WHEEL "$dir/Dockerfile"; then
        cp "$ca_bundle" "$context/ca-bundle.crt"
        ln "$torch_wheel" "$context/$torch_wheel_name" 2>/dev/null || cp "$torch_wheel" "$context/$torch_wheel_name"
        args+=(--build-arg "TORCH_WHEEL=$torch_wheel_name")
    fi
    for arg in "$@"; do args+=(--build-arg "$arg"); done
    if ! docker build --label "$label=$inputs" "${args[@]}" -t "$tag" "$context" >"$log" 2>&1; then
        echo "standin: building $tag failed; the build log ends:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    rm -rf "$context" "$log"
}

airflow_standin="$prefix/airflow:$airflow_tag"
ray_standin="$prefix/ray:${ray_image#*:}"
postgres_standin="$prefix/postgres:15"
build_base
build_standin "$airflow_standin" "$here/airflow" "AIRFLOW_VERSION=$airflow_version"
build_standin "$ray_standin" "$here/ray" "RAY_VERSION=$ray_version"
build_standin "$postgres_standin" "$here/postgres"
echo "STANDIN_AIRFLOW_IMAGE=$airflow_standin"
echo "STANDIN_RAY_IMAGE=$ray_standin"
echo "STANDIN_POSTGRES_IMAGE=$postgres_standin"
