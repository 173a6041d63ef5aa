"""The "Ray Job" extra link: the job's page on the Ray dashboard.

The operator pushes the URL under this link's XCom key as soon as the job is submitted, so the link works
while the task runs and while it is deferred, not only after it ends (Airflow 3 otherwise fills link XComs
when the task finishes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class RayJobLink(BaseOperatorLink):
    """Link to the task's Ray job on the Ray dashboard."""

    name = "Ray Job"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = XCom.get_value(ti_key=ti_key, key="dashboard_url")
        return str(url) if url else ""
