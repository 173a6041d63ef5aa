"""A Lightning module for the graceful-stop test: the example's digits classifier with slow steps, so a stop
lands mid-epoch. Shipped to the cluster with the declarative loop (``ship_modules``)."""

from __future__ import annotations

import time
from typing import Any

from ray_train_examples.lightning_digits import DigitsClassifier


class SlowDigits(DigitsClassifier):  # type: ignore[misc]
    def __init__(self, step_s: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step_s = float(step_s)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        time.sleep(self.step_s)
        return super().training_step(batch, batch_idx)
