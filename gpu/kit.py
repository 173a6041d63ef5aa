"""Make the GPU check's wheel kit: what the GPU machine lacks to run Ray Train, as wheels it can install offline.

The GPU machine (Python 3.12, a CUDA torch, Lightning, Transformers; no Ray) reaches no package registry, and
one call carries at most 64 MiB: the repository's travelling files plus the wheels. This fetches the pinned
wheels (``wheels.txt``: ``ray[default,train]`` 2.60 and ``datasets``, less what ``device_packages.txt`` says
the machine holds) into ``.whl/``, repacks Ray's wheel without ``ray/jars/`` (Java, unused by Python jobs),
checks that the carried wheels and the machine's packages together meet every requirement, and that repository
plus wheels fit in one call. Run here (it needs pip and a registry): ``make gpu-kit``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from depcheck import Dist, read_names, unmet
from packaging.utils import canonicalize_name, parse_wheel_filename

GPU_DIR = Path(__file__).resolve().parent
REPO = GPU_DIR.parent
PINS = GPU_DIR / "wheels.txt"
DEVICE_PACKAGES = GPU_DIR / "device_packages.txt"
#: What one call to the GPU machine carries at most: tracked and untracked-not-ignored files plus carried paths.
TRAVEL_LIMIT = 64 * 2**20
#: What the check needs on the machine: carried or already there.
ROOTS = (
    "ray[default,train]==2.60.0",
    "datasets",
    "torch",
    "pytorch-lightning",
    "transformers",
    "accelerate",
    "scikit-learn",
    "matplotlib",
    "httpx",
)
#: Parts of a wheel no Python Train job loads: ``{distribution: path prefixes}``.
STRIP = {"ray": ("ray/jars/",)}
#: The machine: CPython 3.12 on x86-64 Linux (markers here; pip's platform tags below).
TARGET_ENVIRONMENT = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "platform_release": "",
    "platform_version": "",
}
PIP_TARGET = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    *[
        arg
        for tag in (
            "manylinux_2_28_x86_64",
            "manylinux_2_27_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
            "manylinux1_x86_64",
        )
        for arg in ("--platform", tag)
    ],
]


def wheel_key(path: Path) -> tuple[str, str]:
    name, version, _, _ = parse_wheel_filename(path.name)
    return canonicalize_name(name), str(version)


def prune(dest: Path, pins: dict[str, str | None]) -> list[Path]:
    """Delete wheels that are not pinned (an old version, a dropped package): two versions of one
    distribution stop the whole install there. Returns the pinned wheels already present."""
    kept = []
    for path in sorted(dest.glob("*.whl")):
        name, version = wheel_key(path)
        if pins.get(name) == version:
            kept.append(path)
        else:
            path.unlink()
            print(f"removed {path.name} (not pinned)")
    return kept


def download(dest: Path, requirements: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-qq", "--no-deps", *PIP_TARGET, "-d", str(dest), *requirements]
    subprocess.run(cmd, check=True)


def strip_wheel(path: Path, prefixes: tuple[str, ...]) -> int:
    """Rewrite the wheel without the entries under ``prefixes`` (and their RECORD lines), keeping every other
    entry's bytes and attributes (the executables stay executable). Returns how many entries went."""
    with zipfile.ZipFile(path) as source:
        entries = source.infolist()
        dropped = [info for info in entries if info.filename.startswith(prefixes)]
        if not dropped:
            return 0
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w") as target:
            for info in entries:
                if info.filename.startswith(prefixes):
                    continue
                data = source.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(line for line in lines if not line.startswith(prefixes)).encode()
                target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    os.replace(tmp, path)
    return len(dropped)


def kit_problems(wheels: list[Path], device: dict[str, str | None]) -> list[str]:
    """Requirements from :data:`ROOTS` that neither a carried wheel nor the machine meets, and names both have."""
    carried = {}
    for path in wheels:
        name, version = wheel_key(path)
        with zipfile.ZipFile(path) as wheel:
            metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            carried[name] = Dist(name, version, wheel.read(metadata).decode())
    problems = [f"{name} is carried but the machine has it already" for name in sorted(set(carried) & set(device))]

    def lookup(name: str) -> Dist | None:
        if name in carried:
            return carried[name]
        return Dist(name, device[name]) if name in device else None

    reached, unmet_lines = unmet(ROOTS, lookup, TARGET_ENVIRONMENT)
    problems += unmet_lines
    problems += [f"{name} is carried but nothing needs it" for name in sorted(set(carried) - set(reached))]
    return problems


def travelling_bytes(repo: Path, carried: list[Path]) -> int:
    """What a call carries: the files git tracks or would add (not ignored), ``shared/``, and ``carried``."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = {repo / name for name in listed.split("\0") if name}
    for path in [repo / "shared", *carried]:
        if path.is_dir():
            files.update(p for p in path.rglob("*") if not p.is_dir())
        elif path.exists():
            files.add(path)
    return sum(p.lstat().st_size for p in files if p.is_symlink() or p.exists())


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default=str(REPO / ".whl"), help="where the wheels go (git-ignored)")
    parser.add_argument("--offline", action="store_true", help="only check the wheels already in --dest")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    pins = read_names(str(PINS))
    unpinned = sorted(name for name, version in pins.items() if version is None)
    if unpinned:
        print(f"{PINS}: pin an exact version (name==version) for {unpinned}", file=sys.stderr)
        return 1
    present = {wheel_key(p)[0] for p in prune(dest, pins)}
    missing = [f"{name}=={version}" for name, version in pins.items() if name not in present]
    if missing and args.offline:
        print(f"missing wheels (run without --offline): {missing}", file=sys.stderr)
        return 1
    if missing:
        print(f"downloading {len(missing)} wheels for CPython 3.12 manylinux x86-64 into {dest}")
        download(dest, missing)
    wheels = sorted(dest.glob("*.whl"))
    for path in wheels:
        prefixes = STRIP.get(wheel_key(path)[0])
        if prefixes:
            before = mib(path.stat().st_size)
            if strip_wheel(path, prefixes):
                print(f"repacked {path.name} without {', '.join(prefixes)}: {before} -> {mib(path.stat().st_size)}")

    problems = kit_problems(wheels, read_names(str(DEVICE_PACKAGES)))
    wheel_bytes = sum(p.stat().st_size for p in wheels)
    total = travelling_bytes(REPO, [dest])
    print(f"{len(wheels)} wheels, {mib(wheel_bytes)}; repository {mib(total - wheel_bytes)}; together {mib(total)}")
    print(f"one call carries at most {mib(TRAVEL_LIMIT)}: {mib(TRAVEL_LIMIT - total)} to spare")
    if total > TRAVEL_LIMIT:
        problems.append(f"repository + wheels are {mib(total)}, over the {mib(TRAVEL_LIMIT)} one call carries")
    for line in problems:
        print(f"PROBLEM: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
