"""A PyTorch Lightning image classifier for scikit-learn's 8x8 handwritten digits, trained on Ray Train.

An ordinary Lightning script's pieces (a ``LightningModule`` and a ``LightningDataModule``), with nothing
Ray-specific in them: the provider's declarative loop (``airflow_ray_train_runtime.lightning:train_loop``)
builds them from import paths and fits them with Ray's strategy on every worker. ``prepare_digits`` and
``evaluate_checkpoint`` are what the DAG's Airflow tasks run around the training.

The data ships with scikit-learn (no download): 1,797 images of 10 digits; chance is 0.10.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from airflow_ray_train_runtime.lightning import import_lightning, load_module

pl = import_lightning()

DATA_FILE = "digits.npz"
NUM_CLASSES = 10


def prepare_digits(data_dir: str, seed: int = 0) -> str:
    """Split the digits into train / validation / held-out test (60/20/20, stratified, seeded), scale the
    pixels to [0, 1] and save them as one ``.npz`` under ``data_dir``; returns its path."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        images, labels, test_size=0.4, stratify=labels, random_state=seed
    )
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, DATA_FILE)
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test)
    return path


def load_split(data_path: str, split: str) -> TensorDataset:
    with np.load(data_path) as data:
        images = torch.from_numpy(data[f"x_{split}"]).unsqueeze(1)  # N x 1 x 8 x 8
        labels = torch.from_numpy(data[f"y_{split}"])
    return TensorDataset(images, labels)


class DigitsDataModule(pl.LightningDataModule):  # type: ignore[misc]
    """The prepared splits; Ray's strategy shards the training set across workers."""

    def __init__(self, data_path: str, batch_size: int = 32) -> None:
        super().__init__()
        self.data_path = data_path
        self.batch_size = int(batch_size)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(load_split(self.data_path, "train"), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(load_split(self.data_path, "val"), batch_size=256)


class DigitsClassifier(pl.LightningModule):  # type: ignore[misc]
    """A small CNN: two 3x3 convolutions, a pooling, two linear layers."""

    def __init__(self, lr: float = 2e-3, hidden: int = 64, channels: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * channels * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES),
        )
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = self.loss_fn(self(images), labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss  # type: ignore[no-any-return]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val_loss", self.loss_fn(logits, labels), sync_dist=True)
        self.log("val_accuracy", (logits.argmax(dim=1) == labels).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=float(self.hparams.lr))


def evaluate_checkpoint(checkpoint_path: str, data_path: str) -> dict[str, Any]:
    """Held-out test accuracy of the Lightning checkpoint (the ``.ckpt`` inside the XCom checkpoint path)."""
    model = load_module(DigitsClassifier, checkpoint_path)
    images, labels = load_split(data_path, "test").tensors
    with torch.no_grad():
        predictions = model(images).argmax(dim=1)
    return {"test_accuracy": float((predictions == labels).float().mean()), "n": len(labels)}
