#!/usr/bin/env bash
# A Docker engine and the Compose v2 plugin on a Debian 12 machine, as root, for the docker-compose stack test
# (tests/compose/). Idempotent: each step is skipped where what it makes already answers.
#
#   - the engine: Debian's docker.io, dockerd started in the background (log: /var/log/dockerd.log);
#   - Compose v2: Debian 12's docker-compose is 1.29, which rejects the compose file's top-level `name:`, so
#     the plugin comes from Debian 13's package (one static binary), fetched with a private apt state so the
#     machine's own sources stay untouched;
#   - debootstrap, which docker/standin/build.sh uses to make the stand-in base images.
set -euo pipefail

COMPOSE_SUITE=trixie
MIRROR=http://deb.debian.org/debian
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
DOCKERD_LOG=/var/log/dockerd.log

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "docker-engine: installing docker.io and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        docker.io debootstrap iptables ca-certificates >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    echo "docker-engine: starting dockerd (log: $DOCKERD_LOG)"
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "docker-engine: dockerd did not answer within 60 s; its log ends:" >&2
        tail -n 30 "$DOCKERD_LOG" >&2
        exit 1
    fi
fi

if ! docker compose version >/dev/null 2>&1; then
    echo "docker-engine: installing the Compose v2 plugin from Debian $COMPOSE_SUITE's docker-compose"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/unpacked"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $COMPOSE_SUITE main" \
        >"$work/sources.list"
    # root downloads into the private folders (apt's _apt user could not write there).
    apt_private=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$work/lists" -o APT::Sandbox::User=root)
    apt-get "${apt_private[@]}" update -qq
    (cd "$work" && apt-get "${apt_private[@]}" download -qq docker-compose)
    dpkg -x "$work"/docker-compose_*.deb "$work/unpacked"
    install -D -m 0755 "$work/unpacked/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGIN_DIR/docker-compose"
fi

echo "docker-engine: $(docker version --format 'engine {{.Server.Version}}'), $(docker compose version)"
