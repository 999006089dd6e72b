"""State changes of jobs: each one conditional UPDATE, and the job's timeline."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import update

from storefront.extensions import db
from storefront.models import Job, JobEvent, utcnow

log = logging.getLogger("smi.jobs")


def transition(
    job_id: str, from_states: Iterable[str], *, where: Iterable[Any] = (), **values: Any
) -> bool:
    """Set `values` on the job only if its status is one of `from_states`; True if it changed.

    `where` adds conditions (e.g. `Job.payment_status == "paid"`). The caller commits. This is
    what makes a duplicate event or a second worker harmless.
    """
    values.setdefault("updated_at", utcnow())
    result = db.session.execute(
        update(Job)
        .where(Job.job_id == job_id, Job.status.in_(tuple(from_states)), *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_event(job_id: str, kind: str, message: str = "", actor: str = "system") -> None:
    """Add a line to the job's timeline (the caller commits) and log it."""
    db.session.add(JobEvent(job_id=job_id, kind=kind, message=message, actor=actor))
    log.info("job=%s event=%s %s", job_id, kind, message)


def get_job(job_id: str) -> Job | None:
    """The job with this public id, fresh from the database."""
    return db.session.scalar(
        db.select(Job).where(Job.job_id == job_id).execution_options(populate_existing=True)
    )
