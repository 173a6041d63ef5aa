"""HuggingFace ``transformers.Trainer`` on Ray Train workers, converted the way Ray's Transformers guide
describes: each worker loads the model, tokenizer and dataset itself (``from_pretrained``, ``load_dataset``),
builds ``TrainingArguments`` and ``Trainer`` with a ``compute_metrics``, adds Ray's ``RayTrainReportCallback``
and passes the trainer through ``prepare_trainer``; ``TorchTrainer`` has set up the process group, which
``Trainer`` picks up.

- **Your own loop**: use :func:`add_ray_reporting` on your ``Trainer`` (or import Ray's
  ``RayTrainReportCallback`` / ``prepare_trainer`` from here) and :func:`training_arguments` for defaults
  that suit Ray workers.
- **Declarative**: point the operator's ``train_func`` at :data:`TRANSFORMERS_TRAIN_LOOP` and describe a
  sequence-classification fine-tuning with :class:`SequenceClassificationConfig`: a model name or path, a
  dataset name (or ``"csv"``/``"json"``/``"parquet"`` with ``data_files``), columns and ``TrainingArguments``.

Ray's callback reports on every save, with the metrics Trainer logged under their own names (``loss``,
``eval_loss``, ``eval_accuracy``, ``epoch``, ``step``...), and a checkpoint that holds Trainer's own checkpoint
directory: :func:`model_dir` finds it in the ``checkpoint_path`` from XCom, and ``from_pretrained`` loads it.

Nothing here imports transformers, datasets or Ray at module level; a missing one fails with the pip command.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from airflow_ray_train_runtime.frameworks import (
    DeclarativeConfig,
    fit_or_resume,
    import_function,
    module_of,
    require,
    worker_device,
)
from airflow_ray_train_runtime.spec import SpecError, check_json_value

#: The declarative loop, for the operator's ``train_func``.
TRANSFORMERS_TRAIN_LOOP = "airflow_ray_train_runtime.transformers:train_loop"
#: The directory Ray's ``RayTrainReportCallback`` copies Trainer's checkpoint into.
CHECKPOINT_DIR = "checkpoint"
_RAY_NAMES = ("RayTrainReportCallback", "prepare_trainer")
_PURPOSE = "airflow_ray_train_runtime.transformers"
#: TrainingArguments that suit Ray workers; yours override them. Evaluation and saving on the same schedule
#: keep the reported metrics up to date with each checkpoint (what Ray's callback asks for).
DEFAULT_TRAINING_ARGS: dict[str, Any] = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "steps",
    "logging_steps": 10,
    "save_total_limit": 1,
    "report_to": "none",
    "disable_tqdm": True,
}


def import_transformers() -> ModuleType:
    return require("transformers", "transformers", _PURPOSE)


def import_datasets() -> ModuleType:
    return require("datasets", "datasets", _PURPOSE)


def ray_transformers() -> ModuleType:
    """``ray.train.huggingface.transformers``, after checking transformers is installed."""
    import_transformers()
    return importlib.import_module("ray.train.huggingface.transformers")


def __getattr__(name: str) -> Any:
    if name in _RAY_NAMES:
        return getattr(ray_transformers(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def training_arguments(**kwargs: Any) -> Any:
    """``TrainingArguments`` with :data:`DEFAULT_TRAINING_ARGS` under yours, and ``output_dir`` a fresh
    local temp dir unless you name one (a relative one would land in Ray's session dir; Ray's callback
    copies each checkpoint to the run's storage)."""
    import torch

    transformers = import_transformers()
    merged = {**DEFAULT_TRAINING_ARGS, **kwargs}
    merged.setdefault("output_dir", tempfile.mkdtemp(prefix="hf_output_"))
    # On CPU workers, Trainer (through accelerate) joins Ray's gloo process group only when told it runs on
    # the CPU; without it each worker would train alone on all the data.
    merged.setdefault("use_cpu", not torch.cuda.is_available())
    return transformers.TrainingArguments(**merged)


def add_ray_reporting(trainer: Any, graceful_stop: bool = True) -> Any:
    """Add Ray's ``RayTrainReportCallback`` (and :func:`graceful_stop_callback` unless told not to) and pass
    the trainer through ``prepare_trainer``."""
    ray_hf = ray_transformers()
    trainer.add_callback(ray_hf.RayTrainReportCallback())
    if graceful_stop:
        trainer.add_callback(graceful_stop_callback())
    return ray_hf.prepare_trainer(trainer)


def graceful_stop_callback() -> Any:
    """A ``TrainerCallback`` that takes part in a graceful stop (see ``runtime.stop``): when Airflow stops the
    job, Trainer saves a checkpoint after the current step (``RayTrainReportCallback`` reports it) and ends.
    For a ``Trainer`` of your own: ``trainer.add_callback(graceful_stop_callback())``."""
    transformers = import_transformers()
    from airflow_ray_train_runtime.stop import stop_requested

    class GracefulStop(transformers.TrainerCallback):  # type: ignore[name-defined,misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if stop_requested() and not control.should_training_stop:
                print(f"[transformers] stopping at step {state.global_step}: saving a checkpoint", flush=True)
                control.should_save = True
                control.should_training_stop = True
            return control

    return GracefulStop()


def accuracy_metrics(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics`` for classification: accuracy (Trainer logs it as ``eval_accuracy``)."""
    import numpy as np

    logits, labels = eval_pred
    predictions = np.argmax(logits, axis=-1)
    return {"accuracy": float((predictions == labels).mean())}


@dataclass(frozen=True)
class SequenceClassificationConfig(DeclarativeConfig):
    """A declarative sequence-classification fine-tuning for :data:`TRANSFORMERS_TRAIN_LOOP` (JSON values).

    :param model_name_or_path: a hub model id (``"bert-base-cased"``) or a local directory.
    :param tokenizer_name_or_path: defaults to the model's.
    :param dataset_name: a hub dataset (``"yelp_review_full"``) or a builder (``"csv"``, ``"json"``,
        ``"parquet"``) for ``data_files``; ``load_dataset``'s first argument.
    :param dataset_config_name: ``load_dataset``'s second argument.
    :param data_files: ``load_dataset``'s ``data_files``: a path, a list, or ``{"train": ..., "validation": ...}``.
    :param train_split: the split to train on.
    :param eval_split: the split to evaluate on; default ``validation``, else ``test``.
    :param text_column: the text; ``text_pair_column`` the second text of a pair, if any.
    :param label_column: integer class labels.
    :param num_labels: default: from the dataset (its ``ClassLabel``, else the largest label + 1).
    :param max_length: tokenizer truncation length.
    :param max_train_samples: use only the first that many training rows (after a seeded shuffle).
    :param max_eval_samples: the same for evaluation.
    :param training_args: ``TrainingArguments`` kwargs over :data:`DEFAULT_TRAINING_ARGS`.
    :param compute_metrics: ``"package.module:function"``; default accuracy.
    :param seed: shuffling and ``TrainingArguments.seed``.
    """

    model_name_or_path: str
    tokenizer_name_or_path: str | None = None
    dataset_name: str = "csv"
    dataset_config_name: str | None = None
    data_files: str | list[str] | dict[str, Any] | None = None
    train_split: str = "train"
    eval_split: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    num_labels: int | None = None
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    training_args: dict[str, Any] = field(default_factory=dict)
    compute_metrics: str | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        doc = "SequenceClassificationConfig"
        for name in ("model_name_or_path", "dataset_name", "text_column", "label_column", "train_split"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise SpecError(doc, name, f"is {value!r}", "give a non-empty string")
        if self.dataset_name in ("csv", "json", "parquet", "text") and not self.data_files:
            raise SpecError(
                doc, "data_files", "is empty", f"give the file(s) the {self.dataset_name!r} builder should load"
            )
        if not isinstance(self.training_args, dict):
            raise SpecError(doc, "training_args", f"is a {type(self.training_args).__name__}", "pass a dict")
        if "output_dir" in self.training_args and not str(self.training_args["output_dir"]).startswith(("/", "~")):
            raise SpecError(
                doc,
                "training_args.output_dir",
                f"is the relative path {self.training_args['output_dir']!r}",
                "leave it out (a temp dir; Ray copies checkpoints to storage) or give an absolute path",
            )
        if self.compute_metrics is not None and self.compute_metrics.count(":") != 1:
            raise SpecError(doc, "compute_metrics", f"is {self.compute_metrics!r}", "use 'package.module:function'")
        check_json_value(doc, "training_args", self.training_args)
        check_json_value(doc, "data_files", self.data_files)

    def code_modules(self) -> list[str]:
        """Modules your config names (``compute_metrics``): the operator's ``ship_modules``."""
        return [module_of(self.compute_metrics)] if self.compute_metrics else []


def load_splits(spec: SequenceClassificationConfig) -> tuple[Any, Any]:
    """``load_dataset`` the config names and return its (train, eval) splits, shuffled and cut to size."""
    datasets = import_datasets()
    dataset = datasets.load_dataset(spec.dataset_name, spec.dataset_config_name, data_files=spec.data_files)
    eval_split = spec.eval_split or next((s for s in ("validation", "test") if s in dataset), None)
    for role, split in (("train_split", spec.train_split), ("eval_split", eval_split)):
        if split not in dataset:
            raise ValueError(
                f"{role} is {split!r}, but the dataset has the splits {sorted(dataset)}. Fix: name one of them."
            )
    train, evaluation = dataset[spec.train_split], dataset[eval_split]
    if spec.max_train_samples:
        train = train.shuffle(seed=spec.seed).select(range(min(spec.max_train_samples, len(train))))
    if spec.max_eval_samples:
        evaluation = evaluation.shuffle(seed=spec.seed).select(range(min(spec.max_eval_samples, len(evaluation))))
    return train, evaluation


def infer_num_labels(dataset: Any, label_column: str) -> int:
    feature = dataset.features.get(label_column)
    names = getattr(feature, "names", None)
    if names:
        return len(names)
    return int(max(dataset[label_column])) + 1


def tokenize(dataset: Any, tokenizer: Any, spec: SequenceClassificationConfig) -> Any:
    """Tokenize the text column(s), keep ``labels`` and the model's inputs only."""

    def encode(batch: dict[str, list[Any]]) -> Any:
        pair = batch[spec.text_pair_column] if spec.text_pair_column else None
        return tokenizer(batch[spec.text_column], pair, truncation=True, max_length=spec.max_length)

    # An explicit fingerprint: hashing the closure would make datasets print its bytecode into the log.
    key = [getattr(dataset, "_fingerprint", ""), tokenizer.name_or_path, asdict(spec)]
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    encoded = dataset.map(encode, batched=True, new_fingerprint=fingerprint)
    if spec.label_column != "labels":
        encoded = encoded.rename_column(spec.label_column, "labels")
    keep = {"labels", "input_ids", "attention_mask", "token_type_ids"}
    return encoded.remove_columns([c for c in encoded.column_names if c not in keep])


def train_loop(config: dict[str, Any]) -> None:
    """The declarative per-worker loop (Ray's Transformers guide, from a config): load, tokenize, fine-tune
    with ``Trainer`` + ``RayTrainReportCallback``, resume from Ray's latest checkpoint when one is handed back."""

    spec = SequenceClassificationConfig.from_train_loop_config(config)
    transformers = import_transformers()
    worker_device("transformers")
    train, evaluation = load_splits(spec)
    num_labels = spec.num_labels or infer_num_labels(train, spec.label_column)
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec.tokenizer_name_or_path or spec.model_name_or_path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        spec.model_name_or_path, num_labels=num_labels
    )
    compute_metrics = (
        import_function(spec.compute_metrics, "compute_metrics") if spec.compute_metrics else accuracy_metrics
    )
    defaults: dict[str, Any] = {"seed": spec.seed, "ddp_find_unused_parameters": False}
    if "average_tokens_across_devices" in transformers.TrainingArguments.__dataclass_fields__:
        # A classification loss is a mean per example: scaling it by the world size (made for token-level
        # losses) would report every loss, eval_loss included, times the number of workers.
        defaults["average_tokens_across_devices"] = False
    trainer = transformers.Trainer(
        model=model,
        args=training_arguments(**{**defaults, **spec.training_args}),
        train_dataset=tokenize(train, tokenizer, spec),
        eval_dataset=tokenize(evaluation, tokenizer, spec),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    trainer = add_ray_reporting(trainer)
    fit_or_resume(lambda ckpt: trainer.train(resume_from_checkpoint=ckpt), "transformers", CHECKPOINT_DIR)


def model_dir(checkpoint_path: str) -> str:
    """Trainer's checkpoint directory (model, config, tokenizer) inside a Ray checkpoint directory (the
    ``checkpoint_path`` in XCom); ``from_pretrained`` loads it."""
    path = checkpoint_path.rstrip("/")
    if "://" not in path and not os.path.isdir(f"{path}/{CHECKPOINT_DIR}") and os.path.isfile(f"{path}/config.json"):
        return path
    return f"{path}/{CHECKPOINT_DIR}"


def load_for_sequence_classification(checkpoint_path: str) -> tuple[Any, Any]:
    """The fine-tuned model (in eval mode, on the CPU) and its tokenizer, from the XCom ``checkpoint_path``."""
    transformers = import_transformers()
    directory = model_dir(checkpoint_path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(directory)
    model.eval()
    return model, transformers.AutoTokenizer.from_pretrained(directory)
