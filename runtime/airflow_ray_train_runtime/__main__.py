"""``python -m airflow_ray_train_runtime SPEC``: the Ray job's entrypoint."""

import sys

from airflow_ray_train_runtime.trainer import main

sys.exit(main())
