"""Data preparation and evaluation around a HuggingFace sequence-classification fine-tuning on Ray Train.

The training itself is the provider's declarative loop (``airflow_ray_train_runtime.transformers:train_loop``,
Ray's Transformers guide from a config). These are the DAG's Airflow-side steps: ``prepare_splits`` loads the
dataset with ``load_dataset`` (a hub name such as ``yelp_review_full``, or ``csv`` with ``data_files``) and
writes train / validation / held-out test CSVs every Ray worker can read; ``evaluate_checkpoint`` loads the
fine-tuned model from the checkpoint in XCom with ``from_pretrained`` and scores it on the test split.
``make_tiny_bert`` saves a tiny model to try it all where the hub cannot be reached.
"""

from __future__ import annotations

import csv
import os
from typing import Any

SPLITS = ("train", "validation", "test")


def prepare_splits(
    out_dir: str,
    *,
    dataset_name: str,
    dataset_config_name: str | None = None,
    data_files: str | list[str] | dict[str, Any] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
) -> dict[str, str]:
    """Write ``train.csv``, ``validation.csv`` and ``test.csv`` under ``out_dir``; returns their paths.

    A split the dataset lacks is carved out of ``train`` (10% validation, 20% test, seeded and stratified
    when the labels are a ``ClassLabel``). ``max_*_samples`` cut the splits after a seeded shuffle.
    """
    from datasets import load_dataset

    dataset = load_dataset(dataset_name, dataset_config_name, data_files=data_files)
    train = dataset["train"].select_columns([text_column, label_column]).shuffle(seed=seed)
    splits: dict[str, Any] = {}
    for name in ("test", "validation"):
        if name in dataset:
            splits[name] = dataset[name].select_columns([text_column, label_column]).shuffle(seed=seed)
        else:
            parts = train.train_test_split(test_size=0.2 if name == "test" else 0.125, seed=seed)
            train, splits[name] = parts["train"], parts["test"]
    splits["train"] = train
    limits = {"train": max_train_samples, "validation": max_eval_samples, "test": max_eval_samples}
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name in SPLITS:
        split = splits[name]
        if limits[name]:
            split = split.select(range(min(int(limits[name]), len(split))))
        paths[name] = os.path.join(out_dir, f"{name}.csv")
        split.to_csv(paths[name], index=False)
    return paths


def evaluate_checkpoint(
    checkpoint_path: str, test_file: str, text_column: str = "text", label_column: str = "label", max_length: int = 128
) -> dict[str, Any]:
    """Held-out accuracy of the fine-tuned model in the XCom ``checkpoint_path`` (Trainer's own checkpoint
    directory inside it, loaded with ``from_pretrained``)."""
    import torch
    from datasets import load_dataset

    from airflow_ray_train_runtime.transformers import load_for_sequence_classification, model_dir

    model, tokenizer = load_for_sequence_classification(checkpoint_path)
    test = load_dataset("csv", data_files={"test": test_file})["test"]
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 64):
            batch = test[start : start + 64]
            inputs = tokenizer(
                batch[text_column], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            predictions = model(**inputs).logits.argmax(dim=-1)
            correct += int((predictions == torch.tensor(batch[label_column])).sum())
    return {"test_accuracy": correct / max(len(test), 1), "n": len(test), "model_dir": model_dir(checkpoint_path)}


def make_tiny_bert(out_dir: str, csv_path: str, text_column: str = "text", num_labels: int = 2, seed: int = 0) -> str:
    """Save (``save_pretrained``) a 2-layer BERT with hidden size 32 and a lower-cased word-level vocabulary of
    the CSV's texts, with its tokenizer, under ``out_dir``; returns ``out_dir`` for ``model_name_or_path``."""
    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words: set[str] = set()
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            words.update(row[text_column].lower().split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    os.makedirs(out_dir, exist_ok=True)
    vocab_file = os.path.join(out_dir, "vocab.txt")
    with open(vocab_file, "w") as handle:
        handle.write("\n".join(vocab) + "\n")
    # transformers 5 takes the vocabulary as `vocab`; 4.x took `vocab_file`.
    vocab_arg = "vocab" if int(transformers.__version__.split(".")[0]) >= 5 else "vocab_file"
    tokenizer = BertTokenizerFast(**{vocab_arg: vocab_file}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
