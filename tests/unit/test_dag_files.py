"""Every DAG file a user copies or a test stack loads parses with no import error: the example DAGs, the
integration-test DAGs and the compose stack's DAGs. A check that runs at parse time on a templated value
(``"{{ params.max_epochs }}"`` is text until the task renders it) breaks a whole DAG file."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

REPO = Path(__file__).resolve().parents[2]
FOLDERS = [REPO / "example_dags", REPO / "tests" / "dags", REPO / "tests" / "compose" / "dags"]
DAG_FILES = sorted(path for folder in FOLDERS for path in folder.glob("*.py"))


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_the_dag_file_parses(path: Path) -> None:
    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors, f"{path.name} failed to parse: {bag.import_errors}"
