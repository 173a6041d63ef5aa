"""(c) in a process of its own: ``RayTrainOperator`` (sync) through ``dag.test()``, once per line read on stdin
(the path to write the run's record to), answering each with one ``RESULT <json>`` line on stdout.

The overhead section keeps one worker per provider (this checkout's, and the one at ``BENCH_BEFORE_SRC`` first
on its ``PYTHONPATH``) for all its rounds, so both are warm after the warm-up round and run the same way.
Its environment (Airflow home, DB, connection) is the benchmark's; ``BENCH_WORKSPACE`` names the folders.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    import harness

    harness.importable(harness.Workspace(Path(os.environ["BENCH_WORKSPACE"])))
    from bench_dags import bench_sync

    import airflow_ray_train

    print(f"READY {airflow_ray_train.__file__}", flush=True)
    for line in sys.stdin:
        os.environ["BENCH_RECORD"] = line.strip()
        started = time.perf_counter()
        dag_run = bench_sync.test()
        returned = time.time()
        wall = time.perf_counter() - started
        result = {"wall_s": wall, "returned": returned, "state": str(dag_run.state)}
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
