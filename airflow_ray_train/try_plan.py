"""What a task try does with the Ray jobs it finds under its series' submission ids: collect a result,
attach to a running job, or submit a new job (which resumes the Train run from its latest checkpoint).

Pure decisions over job details, so each rule has a unit test; the operator fetches the jobs and acts.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_ray_train.hooks.jobs_api import JobInfo
from airflow_ray_train.identity import TryIdentity, other_spec
from airflow_ray_train_runtime.spec import JobStatus


class Action(enum.StrEnum):
    """What the try does."""

    COLLECT = "collect"  # an earlier try's job succeeded: take its result
    ATTACH = "attach"  # an earlier try's job still runs: watch it
    SUBMIT = "submit"  # submit a new job (it resumes the Train run from its latest checkpoint)


@dataclass(frozen=True)
class TryPlan:
    """``action`` on ``job`` (None when submitting), under ``submission_id`` when submitting; ``notes`` say
    what was found and not used (one log line each); ``stop`` lists this series' superseded running jobs."""

    action: Action
    submission_id: str
    job: JobInfo | None = None
    notes: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)


def free_submission_id(identity: TryIdentity, taken: Sequence[str]) -> str:
    """This try's submission id, or ``<id>-2``, ``<id>-3`` ... when a job already holds it (the same try
    re-run after its job ended, or another's job): Ray never accepts an id twice."""
    base = identity.submission_id()
    if base not in taken:
        return base
    number = 2
    while f"{base}-{number}" in taken:
        number += 1
    return f"{base}-{number}"


def plan_try(identity: TryIdentity, digest: str, found: Sequence[JobInfo]) -> TryPlan:
    """Decide from ``found``: the details of the jobs under this series' submission ids (this try's and the
    earlier tries', resubmits included), newest first."""
    notes: list[str] = []
    stop: list[str] = []
    taken = [job.submission_id for job in found]
    for job in found:
        job_id, status, ended = job.submission_id, job.status, job.ended
        foreign = identity.not_ours(job.metadata)
        if foreign is not None:
            notes.append(f"Found Ray job {job_id} ({status}) but it is not this task's: {foreign}. Leaving it alone.")
            continue
        changed = other_spec(job.metadata, digest)
        if changed is not None:
            if ended:
                notes.append(f"Earlier Ray job {job_id} ({status}) is not used: {changed}.")
            else:
                notes.append(f"Earlier Ray job {job_id} is still {status} but {changed}: stopping it (superseded).")
                stop.append(job_id)
            continue
        if status == JobStatus.SUCCEEDED:
            return TryPlan(Action.COLLECT, job_id, job, notes, stop)
        if not ended:
            return TryPlan(Action.ATTACH, job_id, job, notes, stop)
        notes.append(
            f"Earlier Ray job {job_id} ended {status}; a new job resumes its Train run from the latest checkpoint."
        )
        break
    return TryPlan(Action.SUBMIT, free_submission_id(identity, taken), None, notes, stop)
