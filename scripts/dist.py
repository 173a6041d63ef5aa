"""`make dist`: the two distributions' wheels and sdists, and their metadata checked by `twine check`.

  python scripts/dist.py [--outdir dist]

Builds `airflow-ray-train-runtime` (runtime/) and `airflow-ray-train` (the repository root) with `python -m build`
(each in an isolated build env, the wheel built from the sdist, as a release would), then runs
`twine check --strict` on all four files. Prints the paths, one per line. tests/unit/test_dist.py checks what each
file holds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECTS = {"airflow-ray-train-runtime": REPO / "runtime", "airflow-ray-train": REPO}


def build(outdir: Path) -> list[Path]:
    """Build both distributions into ``outdir`` (emptied of their earlier files) and check them."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in [*outdir.glob("airflow_ray_train*.whl"), *outdir.glob("airflow_ray_train*.tar.gz")]:
        old.unlink()
    for name, project in PROJECTS.items():
        print(f"building {name} from {project}", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(outdir), str(project)],
            check=True,
            stdout=sys.stderr,
        )
    files = sorted([*outdir.glob("airflow_ray_train*.whl"), *outdir.glob("airflow_ray_train*.tar.gz")])
    twine = [sys.executable, "-m", "twine", "check", "--strict", *map(str, files)]
    subprocess.run(twine, check=True, stdout=sys.stderr)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outdir", type=Path, default=REPO / "dist")
    args = parser.parse_args(argv)
    for path in build(args.outdir.resolve()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
