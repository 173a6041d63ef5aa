"""The "MLflow Run" extra link: the task's run in the MLflow UI.

The run is made before the job is submitted, so the operator pushes its URL at once (like the "Ray Job"
link's): the link works while the job trains, and shows the curves as they are logged. Empty when the task
is not tracked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: The XCom key the run's URL is pushed under.
MLFLOW_RUN_URL_KEY = "mlflow_run_url"


class MlflowRunLink(BaseOperatorLink):
    """Link to the task's MLflow run."""

    name = "MLflow Run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = XCom.get_value(ti_key=ti_key, key=MLFLOW_RUN_URL_KEY)
        return str(url) if url else ""
