"""What the two Jobs API hooks share: the connection they read, the per-request timeout and the retry policy."""

from __future__ import annotations

from airflow_ray_train.compat import BaseHook
from airflow_ray_train.hooks.jobs_api import RetryPolicy
from airflow_ray_train.hooks.settings import DEFAULT_CONN_ID


class JobsApiHook(BaseHook):
    """A hook on a Ray cluster's Jobs REST API.

    :param ray_conn_id: the ``ray_train`` connection; missing (or host ``local``) means the embedded head.
    :param timeout: seconds per HTTP request.
    :param max_retries: retries, with exponential backoff, when the cluster cannot be reached.
    :param retry_backoff: seconds before the first retry; doubles each time.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "ray_train"

    def __init__(
        self,
        ray_conn_id: str = default_conn_name,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries=max_retries, backoff=retry_backoff)
