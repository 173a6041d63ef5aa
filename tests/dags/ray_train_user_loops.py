"""Training loops written the way Ray's guides write them, with none of the provider's declarative helpers:
plain PyTorch (the example's loop, ``ray_train_examples.pytorch_classifier:train_func``, with a pause before its
last report for outage tests), Lightning with Ray's strategy, environment, ``RayTrainReportCallback`` and
``prepare_trainer``, and a HuggingFace ``Trainer`` with Ray's ``RayTrainReportCallback`` and ``prepare_trainer``.
Each saves what its framework saves: a ``state_dict``, Lightning's ``checkpoint.ckpt``, a ``save_pretrained``
folder under ``checkpoint/``."""

from __future__ import annotations

import os
import time
from typing import Any

#: Where ``paused_torch_loop`` says it reached its last report, and where it waits to be let go on.
REACHED_FILE = "reached"
GO_FILE = "go"


def paused_torch_loop(config: dict[str, Any]) -> None:
    """The example's plain PyTorch loop; before the last epoch's training, rank 0 writes ``REACHED_FILE`` in
    ``config["pause_dir"]`` and waits (up to two minutes) for ``GO_FILE`` there: a test takes the tracking
    server down in between."""
    import ray.train
    from ray_train_examples.pytorch_classifier import train_func

    epochs = int(config["epochs"])
    pause_dir = config["pause_dir"]
    if ray.train.get_context().get_world_rank() == 0:
        original_report = ray.train.report
        reported = 0

        def report(metrics: dict[str, Any], **kwargs: Any) -> None:
            nonlocal reported
            reported += 1
            if reported == epochs - 1:
                original_report(metrics, **kwargs)
                open(os.path.join(pause_dir, REACHED_FILE), "w").close()
                deadline = time.monotonic() + 120
                while not os.path.exists(os.path.join(pause_dir, GO_FILE)) and time.monotonic() < deadline:
                    time.sleep(0.2)
                return
            original_report(metrics, **kwargs)

        ray.train.report = report
    train_func(config)


def lightning_loop(config: dict[str, Any]) -> None:
    """Ray's Lightning guide: the example's digits module and data, a ``pl.Trainer`` with Ray's DDP strategy,
    environment and report callback, resumed from Ray's latest checkpoint."""
    import pytorch_lightning as pl
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer
    from ray_train_examples.lightning_digits import DigitsClassifier, DigitsDataModule

    pl.seed_everything(0)
    model = DigitsClassifier(lr=float(config.get("lr", 2e-3)), hidden=64)
    data = DigitsDataModule(config["data_path"], batch_size=32)
    trainer = pl.Trainer(
        max_epochs=int(config["epochs"]),
        devices="auto",
        accelerator="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[RayTrainReportCallback()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        logger=False,
    )
    trainer = prepare_trainer(trainer)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        trainer.fit(model, datamodule=data)
        return
    with checkpoint.as_directory() as directory:
        trainer.fit(model, datamodule=data, ckpt_path=os.path.join(directory, RayTrainReportCallback.CHECKPOINT_NAME))


def transformers_loop(config: dict[str, Any]) -> None:
    """Ray's Transformers guide: ``from_pretrained`` and ``load_dataset`` (local paths here), a ``Trainer`` that
    evaluates and saves every epoch, Ray's report callback and ``prepare_trainer``."""
    import ray.train
    from datasets import load_dataset
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    model = AutoModelForSequenceClassification.from_pretrained(config["model"], num_labels=2)
    splits = load_dataset("csv", data_files={"train": config["train_file"], "validation": config["validation_file"]})

    def tokenize(batch: dict[str, Any]) -> Any:
        return tokenizer(batch["text"], truncation=True, max_length=32, padding="max_length")

    splits = splits.map(tokenize, batched=True)

    def accuracy(prediction: Any) -> dict[str, float]:
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    args = TrainingArguments(
        output_dir=os.path.join(config["output_dir"], str(ray.train.get_context().get_world_rank())),
        num_train_epochs=int(config["epochs"]),
        learning_rate=float(config.get("lr", 1e-2)),
        per_device_train_batch_size=8,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
        compute_metrics=accuracy,
        callbacks=[RayTrainReportCallback()],
    )
    trainer = prepare_trainer(trainer)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        trainer.train()
        return
    with checkpoint.as_directory() as directory:
        trainer.train(resume_from_checkpoint=os.path.join(directory, RayTrainReportCallback.CHECKPOINT_NAME))
