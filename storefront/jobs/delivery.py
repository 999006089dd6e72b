"""Delivered files: download tokens (kept only as digests), link states, counting, fresh links."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from flask import Flask, current_app
from sqlalchemy import ColumnElement, case, select, update
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.http import parse_range_header

from storefront import settings, transactions
from storefront.extensions import db
from storefront.jobs import metrics
from storefront.jobs.queueing import queue_email
from storefront.jobs.state import record_event, transition
from storefront.models import DownloadLog, Job, utcnow
from storefront.storage import StoredObject, backend

log = logging.getLogger("smi.delivery")

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
    return stored_file(job) is not None


def stored_file(job: Job) -> StoredObject | None:
    """The job's delivered file as storage has it, or None when it has none (any more)."""
    if not job.upscaled_file_path:
        return None
    try:
        return backend(_app()).stat(job.upscaled_file_path)
    except ValueError:
        return None


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


def issue_download_token(job_id: str, token: str | None = None) -> str | None:
    """Give a completed job a new token (the old one stops working); None if it can't have one.

    `token` when the caller derived it (an email sent again carries the same link); otherwise a
    random one. Part of the caller's transaction; the token goes in the email and nowhere else.
    """
    if token is None:
        token, digest = new_token()
    else:
        digest = token_digest(token)
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
    stored: StoredObject | None = None

    @property
    def downloads_left(self) -> int:
        """How many more downloads the link allows."""
        if self.job is None:
            return 0
        limit = int(settings.get("DOWNLOAD_MAX_COUNT"))
        return max(0, limit - (self.job.download_count or 0))


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
    stored = stored_file(job)
    if stored is None:
        return Link(LinkState.FILE_GONE, job)
    link = Link(LinkState.READY, job, stored)
    if link.downloads_left <= 0:
        return Link(LinkState.LIMIT_REACHED, job, stored)
    return link


def downloads_used(bytes_served: int, size: int) -> int:
    """The downloads a link has used: the bytes served under it ÷ the file's size, rounded up."""
    return -(-bytes_served // max(size, 1))


def count_download(job_id: str, added: int, size: int) -> int | None:
    """Add bytes served to a link (negative: give them back), and its download_count with them.

    One conditional UPDATE in the caller's transaction: adding is refused (None) when it would take
    the link past DOWNLOAD_MAX_COUNT times the file's size. Returns the link's bytes served now.
    """
    size = max(size, 1)
    total: ColumnElement[int] = Job.download_bytes + added
    where = [Job.job_id == job_id]
    if added >= 0:
        where.append(total <= int(settings.get("DOWNLOAD_MAX_COUNT")) * size)
    else:
        # A link renewed meanwhile starts again from 0; what it gives back cannot go below.
        total = case((total < 0, 0), else_=total)
    result = db.session.execute(
        update(Job)
        .where(*where)
        .values(download_bytes=total, download_count=(total + (size - 1)) // size)
        .returning(Job.download_bytes)
        .execution_options(synchronize_session=False)
    )
    served: int | None = result.scalar_one_or_none()
    return served


def renew_link(job_id: str, actor: str = "buyer") -> bool:
    """Start a fresh link period (fresh expiry, downloads counted anew) for a new link by email.

    Only for a deliverable job. Part of the caller's transaction, which writes the "link" email
    into the outbox too. A current token that works keeps working until that email's task issues
    the new one, so a buyer is never left without a link while the email waits for Redis or SMTP;
    an expired one ends here rather than come back to life with the fresh expiry.
    """
    hours = int(settings.get("DOWNLOAD_EXPIRY_HOURS"))
    now = utcnow()
    changed = transition(
        job_id,
        ["completed"],
        where=deliverable_where(),
        download_token=case((Job.download_expires_at > now, Job.download_token), else_=None),
        download_expires_at=now + dt.timedelta(hours=hours),
        download_count=0,
        download_bytes=0,
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
    """A buyer asked for a fresh link: if the order matches, renew it and write its email into
    the outbox in one transaction, then hand the email to RQ."""
    job = find_resendable_job(email, job_id)
    if job is None:
        transactions.rollback()
        return False
    return resend_link(job.job_id, actor="buyer")


def resend_link(job_id: str, actor: str) -> bool:
    """Renew a deliverable job's link and write its email into the outbox in one transaction,
    then hand the email to RQ; False (nothing changed) if the job can't have one."""
    if not renew_link(job_id, actor=actor):
        transactions.rollback()
        return False
    handover = queue_email("link", job_id, unique=False)
    transactions.commit(handover)
    return True


@dataclass(frozen=True)
class DownloadRequest:
    """What the download log keeps of one request for a file."""

    ip: str
    user_agent: str
    range_header: str


@dataclass(frozen=True)
class Served:
    """The part of the file one response carries: `length` bytes from `start`, of `size` in all."""

    start: int
    length: int
    size: int


def record_download(
    job_id: str, request: DownloadRequest, served: Served, *, streamed: bool
) -> bool:
    """Count a response's bytes against its link before they go out; commits.

    Refused (False, and nothing recorded) when they would take the link past DOWNLOAD_MAX_COUNT
    file sizes; the check and the count are one conditional UPDATE, so parallel requests cannot
    overspend. A response the app streams is logged when it closes (`finish_download`), with the
    bytes it really sent; one nginx sends (X-Accel) is logged now, with the bytes of its range.
    """
    given_back = _resumed_overlap(job_id, served) if streamed else _resumed_hand_off(job_id, served)
    total = count_download(job_id, served.length - given_back, served.size)
    if total is None:
        transactions.rollback()
        return False
    if not streamed:
        added = served.length - given_back
        _log_download(job_id, request, served.length, _counts_more(total, added, served.size))
    transactions.commit()
    return True


def finish_download(
    app: Flask, job_id: str, request: DownloadRequest, served: Served, sent: int
) -> None:
    """A streamed response closed after `sent` bytes: give back the rest and log it; commits.

    Runs after the request, when the server closes the body. If the database fails here, the
    whole range stays counted.
    """
    with app.app_context():
        try:
            total = count_download(job_id, sent - served.length, served.size) or 0
            _log_download(job_id, request, sent, _counts_more(total, sent, served.size))
            transactions.commit()
        except SQLAlchemyError:
            transactions.rollback()
            log.exception("job=%s a download of %s bytes could not be recorded", job_id, sent)


def _counts_more(total: int, added: int, size: int) -> bool:
    """Whether `added` bytes, now part of `total`, took the link to one more download used."""
    return downloads_used(total, size) > downloads_used(total - added, size)


def _log_download(job_id: str, request: DownloadRequest, sent: int, counted: bool) -> None:
    metrics.count_on_commit(metrics.DOWNLOAD_BYTES, sent)
    if counted:
        metrics.count_on_commit(metrics.DOWNLOADS)
    db.session.add(
        DownloadLog(
            job_id=job_id,
            ip=request.ip,
            user_agent=request.user_agent[:500],
            range_header=request.range_header[:100],
            bytes_sent=sent,
            counted=counted,
        )
    )


# A response the buyer broke off has counted what the server wrote, but what was still in flight
# (socket buffers: a few MiB) never arrived, and the browser asks for it again when it resumes.
# When a request starts inside what the link's last response wrote, past its start, that overlap
# is given back: once per response, at most an eighth of the file and 16 MiB, so that breaking
# off responses on purpose gains little.
RESUME_OVERLAP_MAX = 16 * 1024 * 1024


def _resumed_overlap(job_id: str, served: Served) -> int:
    """Bytes of the link's last response, broken off, that this one asks for again."""
    found = _last_download(job_id, served)
    if found is None:
        return 0
    last, (start, length) = found
    written_end = start + last.bytes_sent
    if not (last.bytes_sent < length and start < served.start < written_end):
        return 0
    overlap = min(written_end - served.start, served.length, served.size // 8, RESUME_OVERLAP_MAX)
    return _give_back(last, start, overlap)


def _resumed_hand_off(job_id: str, served: Served) -> int:
    """Bytes of the link's last response, handed to nginx or the bucket, that this one resumes.

    The app does not see such a response break off; a request starting inside it says the buyer
    holds what came before. What follows is given back once, and only to a response that started
    at 0: a resume cannot itself be resumed for free, so breaking off on purpose gains at most one
    file per download counted.
    """
    found = _last_download(job_id, served)
    if found is None:
        return 0
    last, (start, _length) = found
    if start != 0 or not 0 < served.start < last.bytes_sent:
        return 0
    return _give_back(last, 0, min(last.bytes_sent - served.start, served.length))


def _last_download(job_id: str, served: Served) -> tuple[DownloadLog, tuple[int, int]] | None:
    """The link's last logged response and its span, when `served` may resume it."""
    if served.start == 0 or served.length == 0:
        return None
    last = db.session.scalar(
        select(DownloadLog)
        .where(DownloadLog.job_id == job_id)
        .order_by(DownloadLog.id.desc())
        .limit(1)
    )
    span = requested_span(last.range_header, served.size) if last is not None else None
    return (last, span) if last is not None and span is not None else None


def _give_back(last: DownloadLog, start: int, overlap: int) -> int:
    """Take `overlap` bytes off a logged response; it then says what it counts, as a range it
    was served in full, so it gives back once (a conditional UPDATE: parallel resumes too)."""
    kept = last.bytes_sent - overlap
    changed = db.session.execute(
        update(DownloadLog)
        .where(DownloadLog.id == last.id, DownloadLog.bytes_sent == last.bytes_sent)
        .values(bytes_sent=kept, range_header=f"bytes={start}-{start + kept - 1}")
        .execution_options(synchronize_session=False)
    )
    return overlap if changed.rowcount else 0  # type: ignore[attr-defined]


def requested_span(range_header: str, size: int) -> tuple[int, int] | None:
    """The (start, length) a Range header asks of a file of `size` bytes; the whole file if empty.

    None when it asks for several ranges or none that can be served.
    """
    if not range_header:
        return 0, size
    parsed = parse_range_header(range_header)
    bounds = parsed.range_for_length(size) if parsed is not None else None
    if bounds is None:
        return None
    return bounds[0], bounds[1] - bounds[0]
