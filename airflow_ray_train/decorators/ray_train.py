"""``@task.ray_train``: the decorated function is the per-worker Ray Train loop.

.. code-block:: python

    @task.ray_train(scaling_config={"num_workers": 2}, run_config={"storage_path": "/shared/ray_results"})
    def train(config):
        ...  # runs on every Train worker; ray.train.report(...)

    train({"lr": 1e-3})  # or train(config=upstream.output), or train.expand(config=[...])

The function is shipped to the cluster without its DAG file, with what it uses from it and from an enclosing
``@dag`` function (see ``function_shipping``): the DAG needs no packaging, and the cluster needs no Airflow.
The task returns the operator's XCom contract.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from airflow_ray_train.exceptions import RayTrainConfigError
from airflow_ray_train.function_shipping import function_package
from airflow_ray_train.operators.ray_train import RayTrainOperator
from airflow_ray_train.packaging import CodeLookupError, Package, code_package
from airflow_ray_train_runtime.spec import TrainSpec

if TYPE_CHECKING:
    from airflow.sdk import Context


class _RayTrainDecoratedOperator(DecoratedOperator, RayTrainOperator):
    """Runs the decorated function as ``train_func`` on Ray Train; its call argument is ``train_loop_config``."""

    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *RayTrainOperator.template_fields)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **RayTrainOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.ray_train"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if "train_func" in kwargs:
            raise TypeError("@task.ray_train: the decorated function is the train_func; don't pass train_func=")
        kwargs["multiple_outputs"] = False  # the operator pushes its own keys
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            train_func=f"{python_callable.__module__}:{python_callable.__name__}",
            **kwargs,
        )
        self._function_packages: list[Package] = []

    def _call_config(self) -> dict[str, Any]:
        """The dict the function was called with in the DAG (an XComArg is resolved by now)."""
        bound = inspect.signature(self.python_callable).bind_partial(*self.op_args, **self.op_kwargs)
        values = list(bound.arguments.values())
        if len(values) > 1:
            raise RayTrainConfigError(
                f"@task.ray_train function {self.python_callable.__name__} was called with {len(values)} arguments; "
                "a Ray Train loop takes one, its config dict. Fix: call it as train({...}) or train(config=...).",
                field="config",
            )
        config = values[0] if values else (self.train_loop_config or {})
        if not isinstance(config, dict):
            raise RayTrainConfigError(
                f"@task.ray_train function {self.python_callable.__name__} got a {type(config).__name__} as its "
                "config; Ray Train gives every worker a dict. Fix: pass a dict (or an upstream task's dict output).",
                field="config",
            )
        return {**(self.train_loop_config or {}), **config}

    def check_train_func(self, spec: TrainSpec) -> None:
        """Nothing to check: the generated module holds the function by construction."""

    def packages_to_ship(self, spec: TrainSpec) -> list[Package]:
        return self._function_packages

    def execute(self, context: Context) -> Any:
        self.train_loop_config = self._call_config()
        try:
            package, self.train_func, imported = function_package(self.python_callable)
            # The generated module, plus the local packages it imports (the cluster must have the others).
            local = [code_package(module, required=False) for module in imported]
        except CodeLookupError as exc:
            raise RayTrainConfigError(str(exc), field="python_callable") from exc
        self._function_packages = [package, *(p for p in local if p is not None)]
        return super().execute(context)


def ray_train_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """Wrap a function into a Ray Train task (``@task.ray_train``); kwargs are ``RayTrainOperator``'s."""
    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=_RayTrainDecoratedOperator,
        **kwargs,
    )
