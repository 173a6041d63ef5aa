"""``python -m airflow_ray_train.runtime SPEC``: the Ray job's entrypoint."""

import sys

from airflow_ray_train.runtime.trainer import main

sys.exit(main())
