"""Weekly fine-tuning of a HuggingFace sequence classifier on Ray Train, served only if it beats the champion.

The defaults follow Ray's Transformers guide (``bert-base-cased`` on ``yelp_review_full``): ``prepare_data``
loads the dataset with ``load_dataset`` and writes train / validation / held-out test CSVs -> ``train``
fine-tunes with ``transformers.Trainer`` on Ray with 2 workers (the provider's declarative loop: Ray's
``RayTrainReportCallback`` and ``prepare_trainer``; checkpoints ranked by ``eval_accuracy``) -> ``evaluate``
loads the model directory from the XCom checkpoint with ``from_pretrained`` and scores it on the test split
-> ``promote`` moves the alias ``champion`` to the new model version only when its held-out ``test_accuracy``
beats the champion's (``PromoteModelVersionOperator``), else keeps the champion.

This needs MLflow (``[ray_train] mlflow_conn_id`` or ``mlflow_tracking_uri``): the fine-tuning is an MLflow run
with its curves (the evaluation adds its held-out score), ``train`` registers the best checkpoint's model as a
new version of ``text-classifier-transformers`` (the ``mlflow.transformers`` flavour), and ``promote`` tags
that version with its score and decides. Without MLflow nothing is registered, and ``promote`` is skipped.

Point it at your own model and data with the run's params, e.g. ``{"model_name_or_path": "/models/my-bert",
"dataset_name": "csv", "data_files": "/data/reviews.csv"}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_ray_train.operators.mlflow import PromoteModelVersionOperator
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train_runtime.transformers import TRANSFORMERS_TRAIN_LOOP, SequenceClassificationConfig

MODEL_NAME = "text-classifier-transformers"
SCORE = "test_accuracy"

fine_tuning = SequenceClassificationConfig(
    model_name_or_path="{{ params.model_name_or_path }}",
    dataset_name="csv",
    data_files={
        "train": "{{ ti.xcom_pull(task_ids='prepare_data')['train'] }}",
        "validation": "{{ ti.xcom_pull(task_ids='prepare_data')['validation'] }}",
    },
    text_column="{{ params.text_column }}",
    label_column="{{ params.label_column }}",
    num_labels="{{ params.num_labels }}",  # type: ignore[arg-type]  # rendered to an int or None
    max_length="{{ params.max_length }}",  # type: ignore[arg-type]
    training_args={
        "num_train_epochs": "{{ params.num_train_epochs }}",
        "learning_rate": "{{ params.learning_rate }}",
        "per_device_train_batch_size": "{{ params.per_device_train_batch_size }}",
        "per_device_eval_batch_size": 64,
        "weight_decay": 0.01,
        "logging_steps": 10,
    },
)

with DAG(
    dag_id="example_ray_train_transformers",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "model_name_or_path": Param("bert-base-cased", type="string"),
        "dataset_name": Param("yelp_review_full", type="string"),
        "dataset_config_name": Param(None, type=["null", "string"]),
        "data_files": Param(None, type=["null", "string", "array", "object"]),
        "text_column": Param("text", type="string"),
        "label_column": Param("label", type="string"),
        "num_labels": Param(None, type=["null", "integer"]),
        "max_length": Param(128, type="integer", minimum=8),
        "max_train_samples": Param(1000, type=["null", "integer"]),
        "max_eval_samples": Param(1000, type=["null", "integer"]),
        "num_train_epochs": Param(2, type="integer", minimum=1),
        "learning_rate": Param(2e-5, type="number", exclusiveMinimum=0),
        "per_device_train_batch_size": Param(8, type="integer", minimum=1),
    },
    # Templated numbers reach TrainingArguments as numbers, not strings.
    render_template_as_native_obj=True,
    tags=["ray", "transformers", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def prepare_data(**context: Any) -> dict[str, str]:
        from ray_train_examples.model_registry import data_dir
        from ray_train_examples.transformers_text import prepare_splits

        params = context["params"]
        return prepare_splits(
            data_dir(context["dag"].dag_id, context["run_id"]),
            dataset_name=params["dataset_name"],
            dataset_config_name=params["dataset_config_name"],
            data_files=params["data_files"],
            text_column=params["text_column"],
            label_column=params["label_column"],
            max_train_samples=params["max_train_samples"],
            max_eval_samples=params["max_eval_samples"],
        )

    train = RayTrainOperator(
        task_id="train",
        train_func=TRANSFORMERS_TRAIN_LOOP,
        train_loop_config=fine_tuning.train_loop_config(),
        scaling_config={"num_workers": 2, "use_gpu": False},
        run_config={
            "checkpoint_config": {
                "num_to_keep": 1,
                "checkpoint_score_attribute": "eval_accuracy",
                "checkpoint_score_order": "max",
            }
        },
        ship_modules=fine_tuning.code_modules(),
        register_model=MODEL_NAME,
    )

    # Each key of the evaluation is an XCom of its own too, for promote's templated fields.
    @task(multiple_outputs=True)
    def evaluate(training: dict[str, Any], splits: dict[str, str], **context: Any) -> dict[str, Any]:
        from ray_train_examples.transformers_text import evaluate_checkpoint

        from airflow_ray_train.hooks.mlflow import mlflow_hook

        # The best checkpoint by eval_accuracy, and what training reported with it.
        checkpoint_path = training["best_checkpoint_path"]
        train_metrics = next((r["metrics"] for r in training["best_checkpoints"] if r["path"] == checkpoint_path), {})

        params = context["params"]
        result = evaluate_checkpoint(
            checkpoint_path, splits["test"], params["text_column"], params["label_column"], params["max_length"]
        )
        result.update(
            checkpoint_path=checkpoint_path,
            eval_accuracy=train_metrics.get("eval_accuracy"),
            eval_loss=train_metrics.get("eval_loss"),
            model_version=training["model_version"],
            mlflow_run_id=training["mlflow_run_id"],
        )
        hook = mlflow_hook()
        if hook is not None and training["mlflow_run_id"]:
            # The held-out score beside the training curves in the run.
            hook.log_metrics(training["mlflow_run_id"], {SCORE: result[SCORE]})
        print(f"held-out {SCORE} {result[SCORE]:.3f} ({result['n']} texts) for {result['model_dir']}")
        return result

    splits = prepare_data()
    splits >> train
    evaluation = evaluate(train.output, splits)
    PromoteModelVersionOperator(
        task_id="promote",
        model_name=MODEL_NAME,
        version=evaluation["model_version"],
        metric=SCORE,
        metric_value=evaluation[SCORE],
    )
