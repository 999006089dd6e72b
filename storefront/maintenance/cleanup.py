"""Freeing storage: delivered files whose link expired, and what failed or interrupted work left.

Rows are changed by conditional UPDATEs that re-check the reason for the change, and files are
deleted only after the row that pointed at them has been committed without them, so a link that
still works never loses its file. `dry_run` counts what would be done and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from flask import Flask, current_app
from sqlalchemy import ColumnElement, and_, or_, select, update

from storefront import settings, transactions
from storefront.extensions import db
from storefront.jobs.state import record_event
from storefront.maintenance.report import Report, finish
from storefront.models import Job, utcnow
from storefront.storage import remove_stored_file, resolve, storage_root

TEMP_MAX_AGE = dt.timedelta(days=1)
BATCH = 500


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined]


def _file_size(app: Flask, relative: str) -> int:
    try:
        path = resolve(app, relative)
        return path.stat().st_size if path.is_file() else 0
    except (OSError, ValueError):
        return 0


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


def _old(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except OSError:
        return False


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
    deliveries = storage_root(_app()) / "deliveries"
    folders = sorted(p for p in deliveries.iterdir() if p.is_dir()) if deliveries.is_dir() else []
    for start in range(0, len(folders), BATCH):
        chunk = folders[start : start + BATCH]
        kept = {
            job_id: (status, relative)
            for job_id, status, relative in db.session.execute(
                select(Job.job_id, Job.status, Job.upscaled_file_path).where(
                    Job.job_id.in_([folder.name for folder in chunk])
                )
            )
        }
        for folder in chunk:
            status, kept_path = kept.get(folder.name, (None, None))
            _remove_unrecorded_files(report, folder, kept_path, day_ago)
            # A job about to be processed may have just made its folder: leave those.
            if not report.dry_run and status not in ("pending", "processing"):
                try:
                    folder.rmdir()
                except OSError:
                    pass  # still holds the job's file


def _remove_unrecorded_files(
    report: Report, folder: Path, kept_path: str | None, day_ago: dt.datetime
) -> None:
    app = _app()
    cutoff = day_ago.replace(tzinfo=dt.UTC).timestamp()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not _old(path, cutoff):
            continue
        if kept_path and path == resolve(app, kept_path):
            continue
        report.note(str(path.relative_to(storage_root(app))))
        report.add("partial outputs" if path.name.startswith(".tmp-") else "orphan files")
        report.bytes += path.stat().st_size
        if not report.dry_run:
            path.unlink(missing_ok=True)


def _remove_temporary_files(report: Report, day_ago: dt.datetime) -> None:
    """Temporary files elsewhere (previews, uploads) whose writer died."""
    root = storage_root(_app())
    cutoff = day_ago.replace(tzinfo=dt.UTC).timestamp()
    for path in _temporary_files(root, root / "deliveries"):
        if not _old(path, cutoff):
            continue
        report.add("temporary files")
        report.note(str(path.relative_to(root)))
        if report.dry_run:
            report.bytes += path.stat().st_size if path.is_file() else 0
        elif path.is_dir():
            report.bytes += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path, ignore_errors=True)
        else:
            report.bytes += path.stat().st_size
            path.unlink(missing_ok=True)


def _temporary_files(root: Path, skip: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        if here == skip:
            subdirs[:] = []
            continue
        for name in list(subdirs):
            if name.startswith(".tmp-"):
                subdirs.remove(name)
                yield here / name
        for name in files:
            if name.startswith(".tmp-"):
                yield here / name
