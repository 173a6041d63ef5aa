"""A ``train_func`` name can come from run conf: it is looked up before any of its code runs, and the standard
library is refused whether the code is shipped or installed on the cluster."""

from __future__ import annotations

import pytest

from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.packaging import check_train_func_defined, locate_module


def test_looking_a_train_func_up_runs_none_of_its_packages_code(tmp_path, monkeypatch):
    """``importlib.util.find_spec("pkg.loops")`` runs ``pkg/__init__.py``: a name from run conf would run code in
    Airflow before any check. The lookup here finds the file the same way and runs nothing."""
    package = tmp_path / "runconf_pkg"
    (package / "sub").mkdir(parents=True)
    ran = tmp_path / "ran"
    (package / "__init__.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    (package / "sub" / "__init__.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    (package / "sub" / "loops.py").write_text("def train_func(config):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = locate_module("runconf_pkg.sub.loops")
    assert spec is not None and spec.origin == str(package / "sub" / "loops.py")
    check_train_func_defined("runconf_pkg.sub.loops:train_func")
    assert not ran.exists()
    assert locate_module("runconf_pkg.sub.nothing") is None and locate_module("runconf_pkg.sub.loops.x") is None


@pytest.mark.parametrize("ship_code", [True, False])
def test_the_standard_library_is_refused_shipped_or_not(ship_code):
    operator = RayTrainOperator(task_id="t", train_func="subprocess:run", ship_code=ship_code)
    with pytest.raises(RayTrainConfigError) as raised:
        operator.build_spec({})  # type: ignore[arg-type]
    assert raised.value.field == "train_func" and "standard library" in str(raised.value)
