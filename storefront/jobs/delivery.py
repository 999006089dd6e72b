"""Delivered files: download tokens (kept only as digests), link states, counting, fresh links."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from flask import Flask, current_app
from sqlalchemy import ColumnElement, select, update

from storefront import settings, transactions
from storefront.extensions import db
from storefront.jobs.queueing import enqueue_email
from storefront.jobs.state import record_event, transition
from storefront.models import DownloadLog, Job, utcnow
from storefront.storage import resolve

TOKEN_PATTERN = re.compile(r"[0-9a-f]{64}")


def token_digest(token: str) -> str:
    """The SHA-256 of a token, as 64 hex characters: all the database ever keeps."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token (32 random bytes as 64 hex characters) and its digest."""
    token = secrets.token_hex(32)
    return token, token_digest(token)


# The one rule of a deliverable job: completed, paid (not refunded in full), not disputed, with its
# file recorded. `deliverable_where` says it in SQL, `is_deliverable` of a loaded row; `file_kept`
# adds that the file is still in storage.
def deliverable_where() -> list[ColumnElement[bool]]:
    """The deliverable rule as conditions of a conditional UPDATE or a query."""
    return [
        Job.status == "completed",
        Job.payment_status == "paid",
        Job.disputed_at.is_(None),
        Job.upscaled_file_path.is_not(None),
    ]


def is_delivered_and_paid(job: Job) -> bool:
    """The deliverable rule but for the file: completed, paid, not disputed."""
    return job.status == "completed" and job.payment_status == "paid" and job.disputed_at is None


def is_deliverable(job: Job) -> bool:
    """The deliverable rule, of a loaded job."""
    return is_delivered_and_paid(job) and bool(job.upscaled_file_path)


def file_kept(job: Job) -> bool:
    """Whether the job's delivered file is still in storage."""
    if not job.upscaled_file_path:
        return False
    try:
        return resolve(_app(), job.upscaled_file_path).is_file()
    except ValueError:
        return False


def delivered_name(job: Job, suffix: str) -> str:
    """The delivered file's telling name: `<post-slug>-<attachment-id>-4x.jpg`."""
    slug = job.post.slug if job.post else "image"
    return f"{slug}-{job.attachment_id}-{job.resolution}{suffix}"


def delivery_path(job: Job, suffix: str) -> str:
    """Where, under storage, the job's delivered file lives."""
    return f"deliveries/{job.job_id}/{delivered_name(job, suffix)}"


def download_filename(job: Job) -> str:
    """The name the buyer's browser saves the file under."""
    return delivered_name(job, Path(job.upscaled_file_path or "").suffix.lower())


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined]


def issue_download_token(job_id: str) -> str | None:
    """Give a completed job a new token (the old one stops working); None if it can't have one.

    Part of the caller's transaction; the token goes in the email and nowhere else.
    """
    token, digest = new_token()
    changed = transition(job_id, ["completed"], where=deliverable_where(), download_token=digest)
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
        limit = int(settings.get("DOWNLOAD_MAX_COUNT"))
        return max(0, limit - (self.job.download_count or 0))

    def file_path(self) -> Path:
        """The absolute path of the delivered file."""
        assert self.job is not None and self.job.upscaled_file_path
        return resolve(_app(), self.job.upscaled_file_path)


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
    """Count one download if the link has any left: one conditional UPDATE, caller's transaction."""
    limit = int(settings.get("DOWNLOAD_MAX_COUNT"))
    result = db.session.execute(
        update(Job)
        .where(Job.job_id == job_id, Job.download_count < limit)
        .values(download_count=Job.download_count + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew_link(job_id: str, actor: str = "buyer") -> bool:
    """Start a fresh link period: the old token stops working now, a new one goes by email.

    Only for a deliverable job. Part of the caller's transaction; after it, the "link" email
    issues the new token.
    """
    hours = int(settings.get("DOWNLOAD_EXPIRY_HOURS"))
    changed = transition(
        job_id,
        ["completed"],
        where=deliverable_where(),
        download_token=None,
        download_expires_at=utcnow() + dt.timedelta(hours=hours),
        download_count=0,
    )
    if changed:
        record_event(job_id, "link_renewed", f"fresh link for {hours} hours", actor=actor)
    return changed


def find_resendable_job(email: str, job_id: str) -> Job | None:
    """The deliverable job with this id and email whose file is still kept, if any."""
    job = db.session.scalar(
        select(Job).where(
            Job.job_id == job_id.strip(),
            db.func.lower(Job.email) == email.strip().lower(),
            Job.email != "",
        )
    )
    if job is None or not is_deliverable(job) or not file_kept(job):
        return None
    return job


def send_fresh_link(email: str, job_id: str) -> bool:
    """A buyer asked for a fresh link: renew it and queue the email if the order matches."""
    job = find_resendable_job(email, job_id)
    if job is None or not renew_link(job.job_id):
        transactions.rollback()
        return False
    transactions.commit(lambda: enqueue_email("link", job.job_id, unique=False))
    return True


def resend_link(job_id: str, actor: str) -> bool:
    """Renew a deliverable job's link and queue its email (the owner asked); False if it can't."""
    if not renew_link(job_id, actor=actor):
        transactions.rollback()
        return False
    transactions.commit(lambda: enqueue_email("link", job_id, unique=False))
    return True


@dataclass(frozen=True)
class DownloadRequest:
    """What the download log keeps of one request for a file."""

    ip: str
    user_agent: str
    range_header: str


def record_download(
    job_id: str, request: DownloadRequest, *, bytes_sent: int, starts_download: bool
) -> tuple[bool, bool]:
    """Log one request for the file, counting it when it starts a download; commits.

    Returns (allowed, counted): not allowed when it would start a download past the link's limit,
    and then nothing is recorded.
    """
    counted = False
    if starts_download:
        counted = count_download(job_id)
        if not counted:
            transactions.rollback()
            return False, False
    db.session.add(
        DownloadLog(
            job_id=job_id,
            ip=request.ip,
            user_agent=request.user_agent[:500],
            range_header=request.range_header[:100],
            bytes_sent=bytes_sent,
            counted=counted,
        )
    )
    transactions.commit()
    return True, counted
