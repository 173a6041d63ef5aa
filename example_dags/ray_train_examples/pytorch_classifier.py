"""A small plain-PyTorch classifier trained with Ray Train: the per-worker loop, and the evaluation a
downstream Airflow task runs on the checkpoint it gets from XCom.

The data is made in code (Gaussian clusters, fixed seeds), so the example needs no download and the
cluster needs only ``ray[train]`` and ``torch``.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from torch import nn

NUM_FEATURES = 16
NUM_CLASSES = 4
MODEL_FILE = "model.pt"
META_FILE = "model.json"


def make_dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points from NUM_CLASSES overlapping Gaussian clusters (chance is 0.25, the best about 0.88);
    the centres are fixed, ``seed`` draws the points."""
    centres = torch.randn(NUM_CLASSES, NUM_FEATURES, generator=torch.Generator().manual_seed(0)) * 0.6
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    features = centres[labels] + torch.randn(n, NUM_FEATURES, generator=gen)
    return features, labels


def build_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))


def accuracy(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(features).argmax(dim=1) == labels).float().mean())


def train_func(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop: DDP over the workers, a checkpoint and a report every epoch, and a resume
    from the latest checkpoint when Ray hands one back (a retry or a restarted worker group)."""
    import ray.train
    import ray.train.torch
    from torch.utils.data import DataLoader, TensorDataset

    from airflow_ray_train_runtime.frameworks import worker_device

    hidden = int(config.get("hidden", 32))
    epochs = int(config.get("epochs", 5))
    torch.manual_seed(int(config.get("seed", 0)))

    # The device Ray gave this worker (a GPU with use_gpu=True): prepare_model and prepare_data_loader move
    # the model and the batches there; the validation tensors go there by hand.
    device = worker_device("pytorch")
    features, labels = make_dataset(int(config.get("train_size", 2000)), seed=1)
    val_x, val_y = (t.to(device) for t in make_dataset(500, seed=2))
    loader = DataLoader(TensorDataset(features, labels), batch_size=int(config.get("batch_size", 64)), shuffle=True)
    loader = ray.train.torch.prepare_data_loader(loader)
    model = ray.train.torch.prepare_model(build_model(hidden))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config.get("lr", 3e-3)))
    loss_fn = nn.CrossEntropyLoss()

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(os.path.join(ckpt_dir, MODEL_FILE), map_location="cpu")
            meta = json.loads(open(os.path.join(ckpt_dir, META_FILE)).read())
        _unwrap(model).load_state_dict(state)
        start_epoch = int(meta["epoch"]) + 1
        print(f"resuming from {checkpoint.path} at epoch {start_epoch}")

    rank = ray.train.get_context().get_world_rank()
    for epoch in range(start_epoch, epochs):
        if ray.train.get_context().get_world_size() > 1:
            loader.sampler.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        for batch_x, batch_y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch_x), batch_y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch_y)
            count += len(batch_y)
        metrics = {
            "epoch": epoch,
            "start_epoch": start_epoch,
            "loss": total / max(count, 1),
            "val_accuracy": accuracy(_unwrap(model), val_x, val_y),
        }
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if rank == 0:
                torch.save(_unwrap(model).state_dict(), os.path.join(tmp, MODEL_FILE))
                with open(os.path.join(tmp, META_FILE), "w") as handle:
                    json.dump({"hidden": hidden, "epoch": epoch, "metrics": metrics}, handle)
                saved = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=saved)
        if config.get("fail_at_epoch") == epoch:
            raise RuntimeError(f"failing on purpose after epoch {epoch} (fail_at_epoch)")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def load_model(checkpoint_path: str) -> nn.Module:
    """Load the model a ``checkpoint_path`` from XCom points to (a local or shared directory)."""
    with open(os.path.join(checkpoint_path, META_FILE)) as handle:
        meta = json.load(handle)
    model = build_model(int(meta["hidden"]))
    model.load_state_dict(torch.load(os.path.join(checkpoint_path, MODEL_FILE), map_location="cpu"))
    return model


def evaluate_checkpoint(checkpoint_path: str, n: int = 1000, seed: int = 3) -> dict[str, Any]:
    """Held-out accuracy of the checkpoint on data the training never saw (a different seed)."""
    features, labels = make_dataset(n, seed=seed)
    return {
        "checkpoint_path": checkpoint_path,
        "test_accuracy": accuracy(load_model(checkpoint_path), features, labels),
        "n": n,
    }
