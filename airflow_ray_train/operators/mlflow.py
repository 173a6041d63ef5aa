"""``PromoteModelVersionOperator``: move an MLflow Model Registry alias (``champion``) to a model version when its
metric beats the version that holds the alias now; safe when promotions of one alias run at once."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_ray_train.compat import AirflowSkipException
from airflow_ray_train.exceptions import RayTrainConfigError, RayTrainMlflowError
from airflow_ray_train.hooks.mlflow import MlflowHook, mlflow_hook

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The version tag a promotion marks its version with, one per alias: ``{"value", "metric", "higher_is_better",
#: "at"}`` (JSON; ``at`` in epoch seconds).
CONTENDER_TAG_PREFIX = "airflow_ray_train.contender."
#: How long a contender's mark counts, in seconds: far longer than a promotion takes. A winner's mark stays
#: on its version after that, as a record, and is ignored.
CONTENDER_WINDOW_S = 15 * 60
#: Rounds of read, compare and set before a promotion gives up: each round past the first follows a move
#: by a promotion running at the same time.
MAX_ROUNDS = 10


@dataclass(frozen=True)
class Standing:
    """A version in the race for an alias, with its metric value (None: it has none, and any value beats it)."""

    version: str
    value: float | None


def as_metric_value(value: Any) -> float:
    """``value`` as a number to compare; raises ``ValueError`` for anything else (NaN compares with nothing)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean")
    number = float(value)
    if math.isnan(number):
        raise ValueError("NaN is not comparable")
    return number


def beats(value: float | None, other: float | None, higher_is_better: bool) -> bool:
    """Whether ``value`` is strictly better than ``other``; a value always beats none."""
    if value is None:
        return False
    if other is None:
        return True
    return value > other if higher_is_better else value < other


def tagged_value(model_version: dict[str, Any], metric: str) -> tuple[str, str] | None:
    """The version's tag holding ``metric`` as ``(key, value)``: the tag named ``metric`` (an evaluation's
    score), else ``metric.<metric>`` (what training reported with the registered checkpoint); None if neither."""
    tags = {tag["key"]: tag["value"] for tag in model_version.get("tags") or []}
    return next(((key, tags[key]) for key in (metric, f"metric.{metric}") if key in tags), None)


@dataclass(frozen=True)
class AliasPromotion:
    """One promotion's race for ``alias``: MLflow has no compare-and-set on aliases, so a promotion marks its
    version as a contender, then reads, compares and sets until a read finds the alias on the best.

    1. Tag the version ``airflow_ray_train.contender.<alias>`` with its value (after the metric tag, so a
       version that is seen as a contender already carries the value it would hold the alias with).
    2. Each round: read the alias's holder and every version of the model; the contenders are the versions
       marked within ``CONTENDER_WINDOW_S`` for the same metric and direction. The best of holder and
       contenders wins: the better value, a version without a value last; on a tie the holder, then the lower
       version number. If the holder is the best, stop; else set the alias to the best (which may be another
       promotion's version) and go round again.
    3. A promotion that stops with another version holding the alias, strictly better than its own, removes
       its mark: no later round needs it. A winner, or a loser on a tie, keeps it until the window passes.

    Why the better version ends holding the alias, whatever the interleaving (with every promotion of the
    alias ending within the window): with no set at all, each promotion's read after its own mark found the
    first holder at least as good as itself. Else take the last set, by promotion P, to version X. P's next read R comes
    after it and P stopped there, so X is at least as good as the holder and every contender R saw. Suppose
    a version B is strictly better than X. B's mark cannot have been set after R: B's own first read would
    then find X holding and set B, a set after the last. It was not visible at R, so it was removed before R:
    B's promotion stopped on a holder H strictly better than B, so better than X; or B never had a mark and
    is the alias's first holder, which only a promotion that read it holding and found a strictly better
    version Y can have replaced. Either way a version strictly better than B is in the same position, and
    since values only grow along this chain and there are finitely many versions, it ends at a version whose
    mark R saw: P would have set it. So no version is better than X. A stale set (one decided on a read that
    an alias move has since overtaken) can put a worse version on the alias for a moment, but the promotion
    that made it reads again, sees the better mark, and sets it back.
    """

    hook: MlflowHook
    model_name: str
    alias: str
    metric: str
    higher_is_better: bool

    @property
    def contender_tag(self) -> str:
        return f"{CONTENDER_TAG_PREFIX}{self.alias}"

    def holder(self) -> Standing | None:
        """The version under the alias and its value (None if it has no numeric value), or None."""
        model_version = self.hook.version_by_alias(self.model_name, self.alias)
        if model_version is None:
            return None
        found = tagged_value(model_version, self.metric)
        try:
            value = None if found is None else as_metric_value(found[1])
        except ValueError:
            value = None
        return Standing(str(model_version["version"]), value)

    def contenders(self, now: float) -> list[Standing]:
        """The versions marked for this alias within the window, for the same metric and direction."""
        found = []
        for model_version in self.hook.search_model_versions(self.model_name):
            tags = {tag["key"]: tag["value"] for tag in model_version.get("tags") or []}
            try:
                mark = json.loads(tags[self.contender_tag])
                value = as_metric_value(mark["value"])
                fresh = now - float(mark["at"]) <= CONTENDER_WINDOW_S
            except (KeyError, TypeError, ValueError):  # unmarked, or a mark this code did not write
                continue
            if fresh and mark.get("metric") == self.metric and mark.get("higher_is_better") is self.higher_is_better:
                found.append(Standing(str(model_version["version"]), value))
        return found

    def best(self, holder: Standing | None, contenders: Sequence[Standing]) -> Standing:
        standings = {standing.version: standing for standing in contenders}
        if holder is not None:
            standings[holder.version] = holder

        def rank(standing: Standing) -> tuple[bool, float, bool, int]:
            order = 0.0 if standing.value is None else -standing.value if self.higher_is_better else standing.value
            is_holder = holder is not None and standing.version == holder.version
            return standing.value is None, order, not is_holder, int(standing.version)

        return min(standings.values(), key=rank)

    def run(self, candidate: Standing) -> Standing:
        """Race ``candidate`` (whose value is tagged already) for the alias; returns the holder at the end."""
        mark = {"value": candidate.value, "metric": self.metric, "higher_is_better": self.higher_is_better}
        self.hook.set_model_version_tag(
            self.model_name, candidate.version, self.contender_tag, json.dumps({**mark, "at": time.time()})
        )
        for _ in range(MAX_ROUNDS):
            holder = self.holder()
            # Our own mark is among the contenders; counted here too, so the race never depends on reading it back.
            best = self.best(holder, [*self.contenders(time.time()), candidate])
            if holder is not None and best.version == holder.version:
                if holder.version != candidate.version and beats(holder.value, candidate.value, self.higher_is_better):
                    self.hook.delete_model_version_tag(self.model_name, candidate.version, self.contender_tag)
                return holder
            self.hook.set_alias(self.model_name, self.alias, best.version)
        raise RayTrainMlflowError(
            f"the alias {self.alias!r} of model {self.model_name!r} moved in each of {MAX_ROUNDS} rounds of "
            "promotion (promotions of it running at once): retry the task; its contender mark stays, so it "
            "still counts in theirs."
        )


class PromoteModelVersionOperator(BaseOperator):
    """Move an MLflow Model Registry alias to a model version when its metric beats the version holding it.

    The version's value is ``metric_value`` when given (an evaluation task's held-out score; it is then set
    as the version's tag ``metric``, so the next promotion compares against it), else the version's tag named
    ``metric``, else its tag ``metric.<metric>`` (set from the metrics training reported with the registered
    checkpoint). The holder's value is read the same way; a holder without one counts as beaten, with a
    warning. A strictly better value moves the alias; a tie keeps the holder. Promotions of one alias that run
    at once end with the best of them holding it (``AliasPromotion``).

    Returns (XCom) ``{"model", "alias", "version", "moved", "previous_version", "value", "previous_value",
    "url"}``: ``moved`` is True when this version holds the alias at the end and did not at the start;
    ``previous_version`` / ``previous_value`` are the holder's when the task started (None: no holder, or no
    value); ``url`` is this version's page in the MLflow UI.

    :param model_name: the registered model. (templated)
    :param version: the model version to promote, e.g. the train task's ``model_version``; None or empty (the
        training was untracked) skips the task. (templated)
    :param metric: the metric to compare, e.g. ``"test_accuracy"``. (templated)
    :param metric_value: this version's value of ``metric``; None: read from the version's tags. (templated)
    :param alias: the alias to move. (templated)
    :param higher_is_better: False for metrics such as a loss, where lower wins.
    :param mlflow_conn_id: the ``mlflow`` connection (default: ``[ray_train] mlflow_conn_id``, else
        ``[ray_train] mlflow_tracking_uri``).
    """

    template_fields: Sequence[str] = ("model_name", "version", "metric", "metric_value", "alias")

    def __init__(
        self,
        *,
        model_name: str,
        version: str | int | None,
        metric: str,
        metric_value: float | str | None = None,
        alias: str = "champion",
        higher_is_better: bool = True,
        mlflow_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(higher_is_better, bool):
            raise RayTrainConfigError(
                f"higher_is_better={higher_is_better!r} is not a boolean. Fix: pass True (accuracy-like metrics) or "
                "False (loss-like metrics).",
                field="higher_is_better",
            )
        self.model_name = model_name
        self.version = version
        self.metric = metric
        self.metric_value = metric_value
        self.alias = alias
        self.higher_is_better = higher_is_better
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def hook(self) -> MlflowHook | None:
        """The MLflow the registry is on, or None when none is configured."""
        return mlflow_hook(self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        version = self._version()
        hook = self._hook()
        for field in ("model_name", "metric", "alias"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise RayTrainConfigError(
                    f"{field}={getattr(self, field)!r} is not a name. Fix: pass the {field} as a non-empty string.",
                    field=field,
                )
        race = AliasPromotion(hook, self.model_name, self.alias, self.metric, self.higher_is_better)
        value = self._value(hook.get_model_version(self.model_name, version))
        start = race.holder()
        if start is not None and start.value is None and start.version != version:
            self.log.warning(
                "version %s holds alias %r of model %r but has no numeric tag %r or %r: it counts as beaten",
                start.version,
                self.alias,
                self.model_name,
                self.metric,
                f"metric.{self.metric}",
            )
        if self.metric_value is not None:
            hook.set_model_version_tag(self.model_name, version, self.metric, str(value))
        end = race.run(Standing(version, value))
        moved = end.version == version and (start is None or start.version != version)
        self.log.info("%s", self._decision(Standing(version, value), start, end, moved))
        return {
            "model": self.model_name,
            "alias": self.alias,
            "version": version,
            "moved": moved,
            "previous_version": None if start is None else start.version,
            "value": value,
            "previous_value": None if start is None else start.value,
            "url": hook.settings.model_version_url(self.model_name, version),
        }

    def _version(self) -> str:
        version = "" if self.version is None else str(self.version).strip()
        if not version:
            raise AirflowSkipException(
                f"no model version to promote (version={self.version!r}): the training was not registered in "
                f"MLflow, so alias {self.alias!r} of model {self.model_name!r} stays as it is. To promote, track "
                "the training in MLflow and pass register_model to RayTrainOperator."
            )
        return version

    def _hook(self) -> MlflowHook:
        if self.hook is None:
            raise RayTrainConfigError(
                f"version {self.version!r} of model {self.model_name!r} is to be promoted, but no MLflow is "
                "configured for this task. Fix: pass mlflow_conn_id, or set [ray_train] mlflow_conn_id or "
                "mlflow_tracking_uri (the same MLflow the train task registered the version in).",
                field="mlflow_conn_id",
            )
        return self.hook

    def _value(self, model_version: dict[str, Any]) -> float:
        """This version's value: ``metric_value``, else its tags; raises ``RayTrainConfigError`` naming the fix."""
        version = model_version["version"]
        if self.metric_value is not None:
            try:
                return as_metric_value(self.metric_value)
            except (TypeError, ValueError) as exc:
                raise RayTrainConfigError(
                    f"metric_value={self.metric_value!r} is not a number ({exc}). Fix: pass version {version}'s "
                    f"score for {self.metric!r} as a number, e.g. the evaluation task's output[{self.metric!r}].",
                    field="metric_value",
                ) from exc
        found = tagged_value(model_version, self.metric)
        if found is None:
            raise RayTrainConfigError(
                f"version {version} of model {self.model_name!r} has no value of {self.metric!r} to compare: "
                f"metric_value is not set, and the version has no tag {self.metric!r} or 'metric.{self.metric}'. "
                f"Fix: pass metric_value (e.g. an evaluation task's held-out score), or name in metric one of "
                "the metrics training reported with the registered checkpoint (its 'metric.<name>' tags).",
                field="metric_value",
            )
        key, raw = found
        try:
            return as_metric_value(raw)
        except ValueError as exc:
            raise RayTrainConfigError(
                f"version {version} of model {self.model_name!r} has the tag {key!r} = {raw!r}, which is not a "
                f"number ({exc}). Fix: pass metric_value, or set the tag to a number.",
                field="metric_value",
            ) from exc

    def _decision(self, candidate: Standing, start: Standing | None, end: Standing, moved: bool) -> str:
        """One line: what the promotion decided and why."""
        direction = "higher" if self.higher_is_better else "lower"
        ours = f"version {candidate.version} ({self.metric} {candidate.value:.6g})"
        where = f"alias {self.alias!r} of model {self.model_name!r}"
        if moved:
            if start is None:
                why = "no version held it"
            elif start.value is None:
                why = f"version {start.version}, which held it, has no {self.metric} value"
            else:
                why = f"it beats version {start.version}'s {start.value:.6g} ({direction} is better)"
            return f"Moved {where} to {ours}: {why}."
        if end.version == candidate.version:
            return f"{ours[0].upper()}{ours[1:]} already holds {where}."
        held = f"version {end.version} ({self.metric} {end.value:.6g})"
        if start is not None and start.version == end.version:
            return f"Kept {where} on {held}: {ours} does not beat it ({direction} is better; a tie keeps it)."
        return f"{where[0].upper()}{where[1:]} went to {held}, promoted at the same time: {ours} does not beat it."
