"""Delivered files: download tokens (kept only as digests), link states, counting, fresh links."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from flask import current_app
from sqlalchemy import ColumnElement, select, update

from storefront.extensions import db
from storefront.jobs.state import record_event, transition
from storefront.models import Job, utcnow
from storefront.storage import resolve

TOKEN_PATTERN = re.compile(r"[0-9a-f]{64}")


def token_digest(token: str) -> str:
    """The SHA-256 of a token, as 64 hex characters: all the database ever keeps."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token (32 random bytes as 64 hex characters) and its digest."""
    token = secrets.token_hex(32)
    return token, token_digest(token)


def _deliverable() -> list[ColumnElement[bool]]:
    """Conditions under which a completed job's file may be handed out."""
    return [
        Job.payment_status == "paid",
        Job.disputed_at.is_(None),
        Job.upscaled_file_path.is_not(None),
    ]


def issue_download_token(job_id: str) -> str | None:
    """Give a completed job a new token (the old one stops working); None if it can't have one.

    The caller commits, then puts the returned token in the email and nowhere else.
    """
    token, digest = new_token()
    changed = transition(
        job_id,
        ["completed"],
        where=_deliverable(),
        download_token=digest,
    )
    return token if changed else None


class LinkState(Enum):
    """What a download link leads to."""

    READY = "ready"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    LIMIT_REACHED = "limit_reached"
    REFUNDED = "refunded"
    NOT_READY = "not_ready"
    FILE_GONE = "file_gone"


@dataclass
class Link:
    """A download link resolved to its job and its state."""

    state: LinkState
    job: Job | None = None

    @property
    def downloads_left(self) -> int:
        """How many more downloads the link allows."""
        if self.job is None:
            return 0
        limit = int(current_app.config["DOWNLOAD_MAX_COUNT"])
        return max(0, limit - (self.job.download_count or 0))

    def file_path(self) -> Path:
        """The absolute path of the delivered file."""
        assert self.job is not None and self.job.upscaled_file_path
        return resolve(current_app._get_current_object(), self.job.upscaled_file_path)  # type: ignore[attr-defined]


def find_link(token: str) -> Link:
    """Resolve a token from a URL; an unknown one costs the same lookup as a near miss."""
    digest = token_digest(token if TOKEN_PATTERN.fullmatch(token) else "x" * 64)
    job = db.session.scalar(
        select(Job).where(Job.download_token == digest).execution_options(populate_existing=True)
    )
    if job is None or not TOKEN_PATTERN.fullmatch(token):
        return Link(LinkState.UNKNOWN)
    if job.payment_status == "refunded" or job.disputed_at is not None:
        return Link(LinkState.REFUNDED, job)
    if job.status != "completed":
        return Link(LinkState.NOT_READY, job)
    if job.download_expires_at is None or job.download_expires_at <= utcnow():
        return Link(LinkState.EXPIRED, job)
    if not job.upscaled_file_path:
        return Link(LinkState.FILE_GONE, job)
    link = Link(LinkState.READY, job)
    if not link.file_path().is_file():
        return Link(LinkState.FILE_GONE, job)
    if link.downloads_left <= 0:
        return Link(LinkState.LIMIT_REACHED, job)
    return link


def count_download(job_id: str) -> bool:
    """Count one download if the link has any left: one conditional UPDATE. The caller commits."""
    limit = int(current_app.config["DOWNLOAD_MAX_COUNT"])
    result = db.session.execute(
        update(Job)
        .where(Job.job_id == job_id, Job.download_count < limit)
        .values(download_count=Job.download_count + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew_link(job_id: str, actor: str = "buyer") -> bool:
    """Start a fresh link period: the old token stops working now, a new one goes by email.

    Only for a paid, completed, undisputed job whose file is still kept. The caller commits,
    then queues the "link" email, which issues the new token.
    """
    hours = int(current_app.config["DOWNLOAD_EXPIRY_HOURS"])
    changed = transition(
        job_id,
        ["completed"],
        where=_deliverable(),
        download_token=None,
        download_expires_at=utcnow() + dt.timedelta(hours=hours),
        download_count=0,
    )
    if changed:
        record_event(job_id, "link_renewed", f"fresh link for {hours} hours", actor=actor)
    return changed


def find_resendable_job(email: str, job_id: str) -> Job | None:
    """The completed job with this id and email whose file is still kept, if any."""
    job = db.session.scalar(
        select(Job).where(
            Job.job_id == job_id.strip(),
            db.func.lower(Job.email) == email.strip().lower(),
            Job.email != "",
        )
    )
    if job is None or job.status != "completed" or not job.upscaled_file_path:
        return None
    if job.payment_status != "paid" or job.disputed_at is not None:
        return None
    if not resolve(current_app._get_current_object(), job.upscaled_file_path).is_file():  # type: ignore[attr-defined]
        return None
    return job
