"""Freeing storage: delivered files whose link expired, and what failed or interrupted work left.

Rows are changed by conditional UPDATEs that re-check the reason for the change, and files are
deleted only after the row that pointed at them has been committed without them, so a link that
still works never loses its file. `dry_run` counts what would be done and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import time

from flask import Flask, current_app
from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update

from storefront import settings, transactions
from storefront.extensions import db
from storefront.jobs.state import record_event
from storefront.maintenance.report import Report, finish
from storefront.models import BuyerSignIn, EmailOutbox, Job, utcnow
from storefront.storage import TEMPORARY_PREFIX, backend, remove_stored_file

TEMP_MAX_AGE = dt.timedelta(days=1)
# A "My orders" link lives an hour and the session it opens 7 days: past 8 days, a sign-in row
# and the outbox row of its email are of no use to anyone.
SIGN_IN_MAX_AGE = dt.timedelta(days=8)
BATCH = 500


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined]


def _file_size(app: Flask, relative: str) -> int:
    try:
        found = backend(app).stat(relative)
    except ValueError:
        return 0
    return found.size if found is not None else 0


def cleanup_condition(now: dt.datetime, grace: dt.timedelta) -> ColumnElement[bool]:
    """The seed's "jobs ready for cleanup", after a grace period, plus refunded and disputed
    jobs' files (their links were ended without an expiry).
    """
    cutoff = now - grace
    expired = and_(
        Job.download_expires_at.is_not(None),
        Job.download_expires_at < cutoff,
        Job.upscaled_file_path.is_not(None),
    )
    no_longer_sold = and_(
        Job.upscaled_file_path.is_not(None),
        or_(Job.download_expires_at.is_(None), Job.download_expires_at < now),
        or_(
            and_(Job.payment_status == "refunded", Job.refunded_at < cutoff),
            Job.disputed_at < cutoff,
        ),
    )
    return or_(expired, no_longer_sold)


def cleanup_expired_files(
    *, dry_run: bool, now: dt.datetime | None = None, grace_hours: int | None = None
) -> Report:
    """Remove delivered files whose link expired more than the grace period ago, and clear their
    `upscaled_file_path`. A file whose link still works is never touched.
    """
    started = time.monotonic()
    app = _app()
    now = now or utcnow()
    hours = int(settings.get("CLEANUP_GRACE_HOURS")) if grace_hours is None else grace_hours
    condition = cleanup_condition(now, dt.timedelta(hours=max(0, hours)))
    report = Report("expired files", dry_run)
    last_id = 0
    while True:
        rows = db.session.execute(
            select(Job.id, Job.job_id, Job.upscaled_file_path)
            .where(condition, Job.id > last_id)
            .order_by(Job.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        last_id = rows[-1][0]
        to_delete: list[str] = []
        for row_id, job_id, path_value in rows:
            relative = str(path_value)
            size = _file_size(app, relative)
            if dry_run:
                report.add("files")
                report.bytes += size
                report.note(job_id)
                continue
            # Re-checked in the UPDATE itself: a link extended meanwhile keeps its file.
            cleared = db.session.execute(
                update(Job)
                .where(Job.id == row_id, Job.upscaled_file_path == relative, condition)
                .values(upscaled_file_path=None, upscaled_file_size=None, updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if cleared:
                record_event(job_id, "file_removed", f"expired link: {relative}", "maintenance")
                to_delete.append(relative)
                report.note(job_id)
        if not dry_run:
            transactions.commit()
            for relative in to_delete:
                report.bytes += remove_stored_file(app, relative)
                report.add("files")
    report.counts.setdefault("files", 0)
    return finish(report, started)


def remove_leftovers(*, dry_run: bool, now: dt.datetime | None = None) -> Report:
    """Remove failed jobs' files, partial outputs and temporary files older than a day."""
    started = time.monotonic()
    report = Report("leftovers", dry_run)
    day_ago = (now or utcnow()) - TEMP_MAX_AGE
    _remove_failed_job_files(report, day_ago)
    _remove_unrecorded_deliveries(report, day_ago)
    _remove_temporary_files(report, day_ago)
    return finish(report, started)


def _remove_failed_job_files(report: Report, day_ago: dt.datetime) -> None:
    """A failed job's output is never delivered."""
    app = _app()
    failed = db.session.execute(
        select(Job.id, Job.job_id, Job.upscaled_file_path).where(
            Job.status == "failed", Job.failed_at < day_ago, Job.upscaled_file_path.is_not(None)
        )
    ).all()
    for row_id, job_id, path_value in failed:
        relative = str(path_value)
        report.note(job_id)
        if report.dry_run:
            report.add("failed job files")
            report.bytes += _file_size(app, relative)
            continue
        if db.session.execute(
            update(Job)
            .where(Job.id == row_id, Job.status == "failed", Job.upscaled_file_path == relative)
            .values(upscaled_file_path=None, upscaled_file_size=None)
            .execution_options(synchronize_session=False)
        ).rowcount:  # type: ignore[attr-defined]
            record_event(job_id, "file_removed", f"failed job: {relative}", "maintenance")
            transactions.commit()
            report.bytes += remove_stored_file(app, relative)
            report.add("failed job files")


def _remove_unrecorded_deliveries(report: Report, day_ago: dt.datetime) -> None:
    """Files in a job's delivery folder that its row does not point at: partial outputs, and what
    an interrupted cleanup or an archived job left behind."""
    storage = backend(_app())
    old = [
        found
        for found in storage.objects("deliveries/")
        if found.modified < day_ago.replace(tzinfo=dt.UTC)
        and not found.key.rsplit("/", 1)[-1].startswith(TEMPORARY_PREFIX)
    ]
    for start in range(0, len(old), BATCH):
        chunk = old[start : start + BATCH]
        kept = set(
            db.session.scalars(
                select(Job.upscaled_file_path).where(
                    Job.upscaled_file_path.in_([found.key for found in chunk])
                )
            )
        )
        for found in chunk:
            if found.key in kept:
                continue
            report.note(found.key)
            report.add("orphan files")
            report.bytes += found.size
            if not report.dry_run:
                remove_stored_file(_app(), found.key)


def _remove_temporary_files(report: Report, day_ago: dt.datetime) -> None:
    """What a writer that died left: temporary files beside stored ones, unfinished uploads."""
    storage = backend(_app())
    for found in storage.remove_abandoned_uploads(day_ago.replace(tzinfo=dt.UTC), report.dry_run):
        if storage.name == "s3":
            kind = "unfinished uploads"
        elif found.key.startswith("deliveries/"):
            kind = "partial outputs"
        else:
            kind = "temporary files"
        report.add(kind)
        report.note(found.key)
        report.bytes += found.size


def forget_old_sign_ins(*, dry_run: bool, now: dt.datetime | None = None) -> Report:
    """Delete "My orders" sign-in rows (and their emails' outbox rows) whose link expired more
    than SIGN_IN_MAX_AGE ago: every session they opened has ended by then."""
    started = time.monotonic()
    report = Report("sign-in links", dry_run)
    old = BuyerSignIn.expires_at < (now or utcnow()) - SIGN_IN_MAX_AGE
    count = db.session.scalar(select(func.count(BuyerSignIn.id)).where(old)) or 0
    if count and not dry_run:
        outbox_ids = select(BuyerSignIn.outbox_id).where(old).scalar_subquery()
        db.session.execute(delete(EmailOutbox).where(EmailOutbox.id.in_(outbox_ids)))
        db.session.execute(delete(BuyerSignIn).where(old))
        transactions.commit()
    report.add("sign-in links forgotten", count)
    return finish(report, started)
