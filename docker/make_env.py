#!/usr/bin/env python3
"""Write the compose stack's ``.env`` (``docker compose`` reads it) from ``.env.example``, with fresh secrets.

    python3 docker/make_env.py      # before the first `docker compose up`; run again any time, it keeps values

The variables of ``GENERATED`` (Airflow's Fernet key, its JWT secret and its API secret key) have no default in
docker-compose.yml, so no stack runs on a value everyone can read: ``docker compose up`` without them stops and
names this script. Where ``.env`` is missing it is made from ``.env.example`` with those filled in; where it
exists, only the ones it lacks or leaves empty are filled in, and everything else is kept. The file is written
private (mode 0600). Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fernet_key() -> str:
    """A Fernet key, as ``cryptography.fernet.Fernet.generate_key()`` makes one: 32 random bytes, url-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def token() -> str:
    return secrets.token_urlsafe(32)


#: The secrets made here, one per stack: each variable and how its value is made.
GENERATED: dict[str, Callable[[], str]] = {
    "AIRFLOW_FERNET_KEY": fernet_key,
    "AIRFLOW_JWT_SECRET": token,
    "AIRFLOW_API_SECRET_KEY": token,
}
_LINE = re.compile(r"^(?P<name>[A-Za-z_]\w*)=(?P<value>.*)$")


def fill(lines: list[str]) -> tuple[list[str], list[str]]:
    """``lines`` of an env file with every ``GENERATED`` variable that is empty or missing given a fresh value; and
    the names of those."""
    out, seen, made = [], set(), []
    for line in lines:
        match = _LINE.match(line)
        name = match.group("name") if match else None
        if name in GENERATED and name not in seen:
            seen.add(name)
            if not match.group("value").strip():  # type: ignore[union-attr]
                line = f"{name}={GENERATED[name]()}"
                made.append(name)
        out.append(line)
    for name, make in GENERATED.items():
        if name not in seen:
            out.append(f"{name}={make()}")
            made.append(name)
    return out, made


def write_env(example: Path, target: Path) -> list[str]:
    """Make or complete ``target`` (see the module doc); the names of the secrets it generated."""
    source = target if target.exists() else example
    lines, made = fill(source.read_text().splitlines())
    if source is target and not made:
        return []
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(tmp, target)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=REPO / ".env.example")
    parser.add_argument("--env", type=Path, default=REPO / ".env")
    args = parser.parse_args(argv)
    existed = args.env.exists()
    made = write_env(args.example, args.env)
    if made:
        verb = "completed" if existed else f"wrote from {args.example.name}"
        print(f"{args.env}: {verb}, with generated {', '.join(made)}")
    else:
        print(f"{args.env}: already holds every generated secret; nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
