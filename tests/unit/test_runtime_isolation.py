"""The runtime never imports Airflow; the spec needs only the standard library."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_IMPORT = re.compile(r"(from|import)\s+(airflow|airflow_ray_train)(\.|\s|$)")

_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def __init__(self, names):
            self.names = names
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in self.names:
                raise ImportError(f"blocked import of {fullname}")
            return None

    sys.meta_path.insert(0, Block(BLOCKED))
    """
)


def _run(blocked: set[str], body: str) -> subprocess.CompletedProcess[str]:
    code = _BLOCKER.replace("BLOCKED", repr(sorted(blocked))) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_runtime_imports_without_airflow():
    result = _run(
        {"airflow"},
        """
        import airflow_ray_train, airflow_ray_train_runtime
        import airflow_ray_train_runtime.spec, airflow_ray_train_runtime.trainer
        assert not [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]
        print(airflow_ray_train.get_provider_info()["package-name"])
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "airflow-ray-train"


def test_runtime_modules_never_name_airflow():
    # A lazy import inside a function would pass the test above; the source must not have one either.
    sources = sorted((REPO / "runtime" / "airflow_ray_train_runtime").rglob("*.py"))
    assert len(sources) > 10, sources
    for path in sources:
        for line in path.read_text().splitlines():
            # Neither Airflow nor the provider's package (the runtime is installed without them).
            assert not AIRFLOW_IMPORT.match(line.strip()), f"{path}: {line}"


def test_spec_needs_only_the_standard_library():
    result = _run(
        {"airflow", "ray", "torch", "httpx", "pyarrow", "numpy"},
        """
        from airflow_ray_train_runtime.spec import TrainSpec
        spec = TrainSpec(train_func="m:f", run_name="r", submission_id="s")
        print(TrainSpec.from_arg(spec.to_arg()).train_func)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "m:f"


def test_driver_rejects_a_bad_spec_with_usage_and_exit_code_2():
    bad = subprocess.run(
        [sys.executable, "-m", "airflow_ray_train_runtime", '{"train_func": "nope"}'],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "Invalid TrainSpec" in bad.stderr
