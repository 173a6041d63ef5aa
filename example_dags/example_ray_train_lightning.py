"""Weekly retraining of a PyTorch Lightning digits classifier on Ray Train, served only if it beats the champion.

``prepare_data`` splits scikit-learn's digits (train / validation / held-out test) -> ``train`` fits the
``LightningModule`` on Ray with 2 workers (the provider's declarative Lightning loop: ``RayDDPStrategy``,
checkpoints ranked by ``val_accuracy``) -> ``evaluate`` loads the best ``.ckpt`` from XCom and scores it on
the held-out test split -> ``promote`` moves the alias ``champion`` to the new model version only when its
held-out ``test_accuracy`` beats the champion's (``PromoteModelVersionOperator``), else keeps the champion.

This needs MLflow (``[ray_train] mlflow_conn_id`` or ``mlflow_tracking_uri``): the training is an MLflow run
with its curves (the evaluation adds its held-out score), ``train`` registers the best checkpoint as a new
version of ``digits-lightning`` (the ``mlflow.pytorch`` flavour), and ``promote`` tags that version with its
score and decides. Without MLflow nothing is registered, and ``promote`` is skipped.

Trigger with ``{"max_epochs": 1, "lr": 1e-5}`` to see a worse model registered and kept from the alias.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_ray_train.operators.mlflow import PromoteModelVersionOperator
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train_runtime.lightning import LIGHTNING_TRAIN_LOOP, LightningConfig

MODEL_NAME = "digits-lightning"
SCORE = "test_accuracy"

digits_run = LightningConfig(
    module="ray_train_examples.lightning_digits:DigitsClassifier",
    module_kwargs={"lr": "{{ params.lr }}", "hidden": 64},
    datamodule="ray_train_examples.lightning_digits:DigitsDataModule",
    datamodule_kwargs={"data_path": "{{ ti.xcom_pull(task_ids='prepare_data') }}", "batch_size": 32},
    trainer_kwargs={"max_epochs": "{{ params.max_epochs }}", "log_every_n_steps": 5},
    monitor="val_accuracy",
    mode="max",
    top_k=2,
    seed=0,
    progress_every_n_steps=10,
)

with DAG(
    dag_id="example_ray_train_lightning",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "max_epochs": Param(10, type="integer", minimum=1),
        "lr": Param(2e-3, type="number", exclusiveMinimum=0),
    },
    # Templated numbers (max_epochs, lr) reach the Lightning classes as numbers, not strings.
    render_template_as_native_obj=True,
    tags=["ray", "lightning", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def prepare_data(**context: Any) -> str:
        from ray_train_examples.lightning_digits import prepare_digits
        from ray_train_examples.model_registry import data_dir

        return prepare_digits(data_dir(context["dag"].dag_id, context["run_id"]))

    train = RayTrainOperator(
        task_id="train",
        train_func=LIGHTNING_TRAIN_LOOP,
        train_loop_config=digits_run.train_loop_config(),
        scaling_config={"num_workers": 2, "use_gpu": False},
        run_config={"checkpoint_config": digits_run.checkpoint_config()},
        ship_modules=digits_run.code_modules(),
        register_model=MODEL_NAME,
    )

    # Each key of the evaluation is an XCom of its own too, for promote's templated fields.
    @task(multiple_outputs=True)
    def evaluate(training: dict[str, Any], data_path: str) -> dict[str, Any]:
        from ray_train_examples.lightning_digits import evaluate_checkpoint

        from airflow_ray_train.hooks.mlflow import mlflow_hook
        from airflow_ray_train_runtime.lightning import checkpoint_file

        # The best checkpoint by val_accuracy, and what training reported with it.
        checkpoint_path = training["best_checkpoint_path"]
        train_metrics = next((r["metrics"] for r in training["best_checkpoints"] if r["path"] == checkpoint_path), {})
        result = evaluate_checkpoint(checkpoint_path, data_path)
        result.update(
            checkpoint_path=checkpoint_path,
            checkpoint_file=checkpoint_file(checkpoint_path),
            val_accuracy=train_metrics.get("val_accuracy"),
            val_loss=train_metrics.get("val_loss"),
            model_version=training["model_version"],
            mlflow_run_id=training["mlflow_run_id"],
        )
        hook = mlflow_hook()
        if hook is not None and training["mlflow_run_id"]:
            # The held-out score beside the training curves in the run.
            hook.log_metrics(training["mlflow_run_id"], {SCORE: result[SCORE]})
        print(f"held-out {SCORE} {result[SCORE]:.3f} ({result['n']} images) for {result['checkpoint_file']}")
        return result

    data_path = prepare_data()
    data_path >> train
    evaluation = evaluate(train.output, data_path)
    PromoteModelVersionOperator(
        task_id="promote",
        model_name=MODEL_NAME,
        version=evaluation["model_version"],
        metric=SCORE,
        metric_value=evaluation[SCORE],
    )
