"""The declarative loops' part in a graceful stop: once the workers agreed to stop (``runtime.stop``), the
Lightning callback ends the epoch after the current batch and the Transformers callback saves a checkpoint after
the current step and ends training; before that they change nothing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airflow_ray_train_runtime import stop


@pytest.fixture
def agreed(monkeypatch):
    def set_agreed(value: bool) -> None:
        monkeypatch.setattr(stop._STATE, "agreed", value)
        monkeypatch.setattr(stop, "_agree", lambda flag: flag)
        monkeypatch.setattr(stop, "_asked", lambda clock: False)

    return set_agreed


def test_the_lightning_callback_ends_the_epoch_after_the_batch_once_a_stop_is_agreed(agreed, monkeypatch):
    from airflow_ray_train_runtime.lightning import graceful_stop_callback, import_lightning

    import_lightning()  # lightning.pytorch or pytorch_lightning, as Ray's own choice

    monkeypatch.setattr("ray.train.get_context", lambda: SimpleNamespace(get_world_rank=lambda: 1))
    callback = graceful_stop_callback()
    trainer = SimpleNamespace(should_stop=False, global_step=7)
    agreed(False)
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop is False
    agreed(True)
    callback.on_train_batch_end(trainer, None, None, None, 1)
    assert trainer.should_stop is True


def test_the_transformers_callback_saves_then_ends_once_a_stop_is_agreed(agreed, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from airflow_ray_train_runtime.transformers import graceful_stop_callback

    monkeypatch.setattr("ray.train.get_context", lambda: SimpleNamespace(get_world_rank=lambda: 1))
    callback = graceful_stop_callback()
    control = transformers.TrainerControl()
    state = SimpleNamespace(global_step=12)
    agreed(False)
    callback.on_step_end(None, state, control)
    assert not control.should_save and not control.should_training_stop
    agreed(True)
    callback.on_step_end(None, state, control)
    assert control.should_save and control.should_training_stop


def test_a_worker_that_is_not_rank_0_only_follows_what_the_collective_says(monkeypatch):
    monkeypatch.setattr(stop._STATE, "agreed", False)
    monkeypatch.setattr("ray.train.get_context", lambda: SimpleNamespace(get_world_rank=lambda: 3))
    asked: list[float] = []
    monkeypatch.setattr(stop, "_asked", lambda clock: asked.append(clock) or True)
    monkeypatch.setattr(stop, "_agree", lambda flag: True)  # rank 0 said stop
    assert stop.stop_requested() is True and asked == []  # rank 3 never asks the recorder itself
    monkeypatch.setattr(stop, "_agree", lambda flag: pytest.fail("no collective once agreed"))
    assert stop.stop_requested() is True
