"""The audit log of the admin area: one row per action, with the admin's name."""

from __future__ import annotations

import logging

from sqlalchemy import select

from storefront import transactions
from storefront.extensions import db
from storefront.models import AdminAction

log = logging.getLogger("smi.admin")


def log_action(
    admin: str, action: str, target: str = "", detail: str = "", request_id: str | None = None
) -> None:
    """Add an audit row to the session (the caller commits) and log it."""
    db.session.add(
        AdminAction(
            admin=admin, action=action, target=target, detail=detail, request_id=request_id or None
        )
    )
    log.info("admin=%r action=%s target=%s %s", admin, action, target, detail)


def record_action(admin: str, action: str, target: str = "", detail: str = "") -> None:
    """Add an audit row in a transaction of its own (sign-out, say)."""
    log_action(admin, action, target, detail)
    transactions.commit()


def already_done(request_id: str | None) -> AdminAction | None:
    """The action already made with this form's one-time id, if any."""
    if not request_id:
        return None
    return db.session.scalar(select(AdminAction).where(AdminAction.request_id == request_id))


def audit_page(page: int, per_page: int) -> tuple[list[AdminAction], bool]:
    """One page of the audit log, newest first, and whether an older page exists."""
    rows = db.session.scalars(
        select(AdminAction)
        .order_by(AdminAction.id.desc())
        .limit(per_page + 1)
        .offset((max(1, page) - 1) * per_page)
    ).all()
    return list(rows[:per_page]), len(rows) > per_page
