"""The email outbox: every email a job needs is first a row, written in the transaction of the
change that needs it, so that neither Redis nor SMTP being down can lose it.

`queueing.hand_over` gives a row to RQ after the commit, `emails.deliver` marks it done (once), and
the sweeper hands over again the rows that were never handed over or never sent. Each function
here works inside its caller's transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storefront.extensions import db
from storefront.models import EmailOutbox, utcnow

# Each handover gives RQ its own retries (about 40 minutes of them); past this many, a row is left
# for a person to look at.
MAX_HANDOVERS = 12

# INSERT … ON CONFLICT DO NOTHING, in the dialect of each database the shop runs on.
_INSERTS: dict[str, Callable[..., Any]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


def add(kind: str, job_id: str, *, once: bool) -> int | None:
    """Write an email down; its row id, or None when `once` and the job has this kind already.

    A job's once-only email (`once_key`) is written down once however many transactions ask for
    it at the same time: the second INSERT does nothing rather than fail its transaction.
    """
    insert = _INSERTS[db.session.get_bind().dialect.name]
    statement = (
        insert(EmailOutbox)
        .values(
            kind=kind,
            job_id=job_id,
            once_key=f"{kind}-{job_id}" if once else None,
            created_at=utcnow(),
            handovers=0,
        )
        .on_conflict_do_nothing()
        .returning(EmailOutbox.id)
    )
    return db.session.execute(statement).scalar()


def get(outbox_id: int) -> EmailOutbox | None:
    """The row as the database has it now."""
    return db.session.get(EmailOutbox, outbox_id, populate_existing=True)


def is_pending(outbox_id: int) -> bool:
    """Whether the row exists and its email has not been dealt with yet."""
    row = get(outbox_id)
    return row is not None and row.finished_at is None


def superseded(outbox_id: int) -> bool:
    """Whether a later email of the same kind was written down for the same job: a buyer who
    asked for fresh links three times while Redis was down gets one email, with the last link."""
    row = get(outbox_id)
    if row is None:
        return False
    later = select(EmailOutbox.id).where(
        EmailOutbox.job_id == row.job_id, EmailOutbox.kind == row.kind, EmailOutbox.id > row.id
    )
    return db.session.scalar(later.limit(1)) is not None


def mark_handed(outbox_id: int) -> None:
    """Note that RQ has the row's email now."""
    db.session.execute(
        update(EmailOutbox)
        .where(EmailOutbox.id == outbox_id)
        .values(handed_at=utcnow(), handovers=EmailOutbox.handovers + 1)
        .execution_options(synchronize_session=False)
    )


def finish(outbox_id: int, outcome: str) -> bool:
    """Mark the row done with its outcome ("sent", or why nothing was); False if it was already."""
    result = db.session.execute(
        update(EmailOutbox)
        .where(EmailOutbox.id == outbox_id, EmailOutbox.finished_at.is_(None))
        .values(finished_at=utcnow(), outcome=outcome[:200])
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def due(before: dt.datetime, limit: int = 500) -> list[tuple[int, str]]:
    """(id, job id) of the rows still to be sent, last handed over (or written) before `before`."""
    last_touched = func.coalesce(EmailOutbox.handed_at, EmailOutbox.created_at)
    rows = db.session.execute(
        select(EmailOutbox.id, EmailOutbox.job_id)
        .where(
            EmailOutbox.finished_at.is_(None),
            EmailOutbox.handovers < MAX_HANDOVERS,
            last_touched < before,
        )
        .order_by(EmailOutbox.id)
        .limit(limit)
    ).all()
    return [(row.id, row.job_id) for row in rows]
