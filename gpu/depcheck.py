"""Which declared requirements a set of Python distributions leaves unmet.

Shared by the kit (the wheels carried to the GPU machine plus what its image holds, checked here before they
travel) and the device check (what is importable there, checked before training). Needs only ``packaging``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.parser import HeaderParser

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Dist:
    """A distribution as far as it is known: ``version`` and ``metadata`` (its METADATA text) may be None
    (a package the device holds in a version not recorded here)."""

    name: str
    version: str | None = None
    metadata: str | None = None


def requires(metadata: str, extras: Iterable[str], environment: dict[str, str]) -> list[Requirement]:
    """The ``Requires-Dist`` entries of ``metadata`` that apply under ``environment`` with ``extras``."""
    wanted = ["", *extras]
    found = []
    for line in HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({**environment, "extra": extra}) for extra in wanted):
            found.append(requirement)
    return found


def unmet(
    roots: Iterable[str], lookup: Callable[[str], Dist | None], environment: dict[str, str]
) -> tuple[dict[str, Dist], list[str]]:
    """Walk the requirements from ``roots`` (``"ray[default,train]==2.60.0"``...) through ``lookup`` (a
    canonical name -> ``Dist``, or None when absent). Returns the distributions reached and one line per
    requirement that is absent or whose known version it does not accept."""
    reached: dict[str, Dist] = {}
    problems: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [("(kit)", Requirement(root)) for root in roots]
    while queue:
        wanted_by, requirement = queue.pop(0)
        name = canonicalize_name(requirement.name)
        dist = lookup(name)
        if dist is None:
            problems.append(f"{wanted_by} needs {requirement}: not there")
            continue
        reached[name] = dist
        if dist.version is not None and not requirement.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{wanted_by} needs {requirement}: found {dist.version}")
        key = (name, frozenset(requirement.extras))
        if key in seen or dist.metadata is None:
            continue
        seen.add(key)
        queue.extend((name, sub) for sub in requires(dist.metadata, requirement.extras, environment))
    return reached, problems


def read_names(path: str) -> dict[str, str | None]:
    """A list of ``name`` or ``name==version`` lines (``#`` comments) as {canonical name: version or None}."""
    found: dict[str, str | None] = {}
    with open(path) as handle:
        for raw in handle:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            name, _, version = line.partition("==")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name.strip()):
                raise ValueError(f"{path}: {raw.strip()!r} is not 'name' or 'name==version'")
            found[canonicalize_name(name.strip())] = version.strip() or None
    return found
