"""The DAG the benchmark runs through ``dag.test()``: one ``RayTrainOperator`` task, subclassed only to record
when ``execute()`` started and returned and how many HTTP requests the hook sent (written to the JSON file
named by ``$BENCH_RECORD``). The operator itself is the provider's, unchanged."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

from airflow.sdk import DAG

from airflow_ray_train.operators.ray_train import RayTrainOperator

TRAIN_FUNC = "ray_train_examples.pytorch_classifier:train_func"
TRAIN_LOOP_CONFIG = {"train_size": 256, "epochs": 1, "batch_size": 64, "hidden": 16}
SCALING_CONFIG = {"num_workers": 2, "use_gpu": False}


class TimedRayTrainOperator(RayTrainOperator):
    def execute(self, context: Any) -> Any:
        started = time.time()
        hook = self.hook
        requests: Counter[str] = Counter()
        original = hook._request

        def counting(method: str, path: str, **kwargs: Any) -> Any:
            kind = "logs" if path.endswith("/logs") else "packages" if "/packages/" in path else "other"
            requests[f"{method} {kind}"] += 1
            return original(method, path, **kwargs)

        hook._request = counting  # type: ignore[method-assign]
        result = super().execute(context)
        returned = time.time()
        record = os.environ.get("BENCH_RECORD")
        if record:
            with open(record, "w") as handle:
                json.dump(
                    {
                        "execute_started": started,
                        "execute_returned": returned,
                        "job_id": result.get("job_id") if isinstance(result, dict) else None,
                        "requests": dict(requests),
                        "bytes_uploaded": hook.bytes_uploaded,
                    },
                    handle,
                )
        return result


with DAG(dag_id="bench_overhead_sync", schedule=None, catchup=False, tags=["bench"]) as bench_sync:
    TimedRayTrainOperator(
        task_id="train",
        train_func=TRAIN_FUNC,
        train_loop_config=TRAIN_LOOP_CONFIG,
        scaling_config=SCALING_CONFIG,
        deferrable=False,
    )


# (d): the same job, deferrable, for a real scheduler + triggerer (`airflow standalone`).
with DAG(dag_id="bench_overhead_deferrable", schedule=None, catchup=False, tags=["bench"]) as bench_deferrable:
    RayTrainOperator(
        task_id="train",
        train_func=TRAIN_FUNC,
        train_loop_config=TRAIN_LOOP_CONFIG,
        scaling_config=SCALING_CONFIG,
        deferrable=True,
    )
