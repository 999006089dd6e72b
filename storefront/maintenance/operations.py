"""Maintenance and data retention: expired files, leftovers, archived job records, revenue report.

Each operation takes `dry_run`: it then counts what it would do and changes nothing. Rows are
changed by conditional UPDATEs that re-check the reason for the change, and files are deleted only
after the row that pointed at them has been committed without them, so a link that still works
never loses its file.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from sqlalchemy import ColumnElement, and_, delete, or_, select, update

from storefront import settings, transactions
from storefront.accounts.audit import log_action
from storefront.extensions import db
from storefront.jobs.state import record_event
from storefront.models import DownloadLog, Job, JobEvent, utcnow
from storefront.reports.dashboard import DayRevenue, revenue_by_day
from storefront.reports.job_list import csv_value
from storefront.storage import remove_stored_file, resolve, storage_root

log = logging.getLogger("smi.maintenance")

TEMP_MAX_AGE = dt.timedelta(days=1)
BATCH = 500
SAMPLE = 50
EXPORT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class MaintenanceError(RuntimeError):
    """An operation could not run; the message says why, and nothing was deleted."""


@dataclass
class Report:
    """What an operation did (or, in a dry run, would do)."""

    operation: str
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    sample: list[str] = field(default_factory=list)
    bytes: int = 0
    export_path: str | None = None
    seconds: float = 0.0

    def add(self, name: str, amount: int = 1) -> None:
        """Count `amount` more of `name`."""
        self.counts[name] = self.counts.get(name, 0) + amount

    def note(self, item: str) -> None:
        """Keep a few examples of what was touched."""
        if len(self.sample) < SAMPLE:
            self.sample.append(item)

    def summary(self) -> str:
        """One line: the operation, whether it was a dry run, and its counts."""
        verb = "would" if self.dry_run else "did"
        counts = ", ".join(f"{name} {count}" for name, count in self.counts.items()) or "nothing"
        size = f", {self.bytes / 1_000_000:.1f} MB" if self.bytes else ""
        export = f", export {self.export_path}" if self.export_path else ""
        return f"{self.operation} ({verb}): {counts}{size}{export}"


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined]


def _timed(report: Report, started: float) -> Report:
    report.seconds = round(time.monotonic() - started, 3)
    log.info("%s in %.2fs", report.summary(), report.seconds)
    return report


def _file_size(app: Flask, relative: str) -> int:
    try:
        path = resolve(app, relative)
        return path.stat().st_size if path.is_file() else 0
    except (OSError, ValueError):
        return 0


# Expired download files ---------------------------------------------------------------------


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
    return _timed(report, started)


# Leftovers and temporary files ---------------------------------------------------------------


def _old(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except OSError:
        return False


def remove_leftovers(*, dry_run: bool, now: dt.datetime | None = None) -> Report:
    """Remove failed jobs' files, partial outputs and temporary files older than a day."""
    started = time.monotonic()
    app = _app()
    now = now or utcnow()
    report = Report("leftovers", dry_run)
    day_ago = now - TEMP_MAX_AGE
    cutoff = day_ago.replace(tzinfo=dt.UTC).timestamp()

    # A failed job's output is never delivered.
    failed = db.session.execute(
        select(Job.id, Job.job_id, Job.upscaled_file_path).where(
            Job.status == "failed", Job.failed_at < day_ago, Job.upscaled_file_path.is_not(None)
        )
    ).all()
    for row_id, job_id, path_value in failed:
        relative = str(path_value)
        report.note(job_id)
        if dry_run:
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

    # Files in a job's delivery folder that its row does not point at: partial outputs, and what
    # an interrupted cleanup or an archived job left behind.
    deliveries = storage_root(app) / "deliveries"
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
            for path in sorted(folder.iterdir()):
                if not path.is_file() or not _old(path, cutoff):
                    continue
                if kept_path and path == resolve(app, kept_path):
                    continue
                report.note(str(path.relative_to(storage_root(app))))
                report.add("partial outputs" if path.name.startswith(".tmp-") else "orphan files")
                report.bytes += path.stat().st_size
                if not dry_run:
                    path.unlink(missing_ok=True)
            # A job about to be processed may have just made its folder: leave those.
            if not dry_run and status not in ("pending", "processing"):
                try:
                    folder.rmdir()
                except OSError:
                    pass  # still holds the job's file

    # Temporary files elsewhere (previews, uploads) whose writer died.
    for path in _temporary_files(storage_root(app), deliveries):
        if not _old(path, cutoff):
            continue
        report.add("temporary files")
        report.note(str(path.relative_to(storage_root(app))))
        if dry_run:
            report.bytes += path.stat().st_size if path.is_file() else 0
            continue
        if path.is_dir():
            report.bytes += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path, ignore_errors=True)
        else:
            report.bytes += path.stat().st_size
            path.unlink(missing_ok=True)
    return _timed(report, started)


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


# Archive ------------------------------------------------------------------------------------


def archive_condition(
    cutoff: dt.datetime, now: dt.datetime, include_abandoned: bool
) -> ColumnElement[bool]:
    """Finished jobs older than `cutoff` with nothing left to download or to do."""
    statuses = ["completed", "failed"] + (["abandoned"] if include_abandoned else [])
    return and_(
        Job.created_at < cutoff,
        Job.status.in_(statuses),
        Job.upscaled_file_path.is_(None),
        or_(Job.download_expires_at.is_(None), Job.download_expires_at < now),
        # A failed job still owed a refund (or a retry) stays in sight.
        ~and_(Job.status == "failed", Job.payment_status == "paid", Job.refunded_at.is_(None)),
    )


def export_format(path: Path) -> str:
    """`csv` or `jsonl`, from the file's extension."""
    kind = EXPORT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise MaintenanceError(
            f"cannot tell the export format from {path.name!r}: name it .csv or .jsonl"
        )
    return kind


COLUMNS = list(Job.__table__.columns)


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    return value


def _write_export(path: Path, kind: str, batches: Iterable[list[Any]]) -> int:
    """Write rows to a temporary file beside `path`, flush it to disk, then rename it."""
    temporary = path.with_name(f".tmp-{path.name}")
    written = 0
    try:
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle) if kind == "csv" else None
            if writer is not None:
                writer.writerow([column.name for column in COLUMNS])
            for rows in batches:
                for row in rows:
                    if writer is not None:
                        writer.writerow([csv_value(value) for value in row])
                    else:
                        record = {c.name: _json_value(v) for c, v in zip(COLUMNS, row, strict=True)}
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    written += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return written


def archive_jobs(
    *,
    older_than_days: int,
    export_path: Path | None,
    include_abandoned: bool = False,
    dry_run: bool,
    now: dt.datetime | None = None,
    actor: str = "maintenance",
) -> Report:
    """Export finished jobs older than `older_than_days` to CSV or JSON Lines, then delete them
    with their timeline and download log. Nothing is deleted unless the export was written in full.
    """
    started = time.monotonic()
    if older_than_days < 1:
        raise MaintenanceError("--older-than must be at least 1 day")
    now = now or utcnow()
    condition = archive_condition(now - dt.timedelta(days=older_than_days), now, include_abandoned)
    kind = "jsonl"
    if not dry_run:
        if export_path is None:
            raise MaintenanceError("archiving needs an export file (--export FILE)")
        kind = export_format(export_path)
        if export_path.exists():
            raise MaintenanceError(f"{export_path} exists already; choose a new file name")
        if not export_path.parent.is_dir():
            raise MaintenanceError(f"the folder {export_path.parent} does not exist")
    report = Report("archive", dry_run)
    ids = list(db.session.scalars(select(Job.id).where(condition).order_by(Job.id)))
    report.counts["jobs"] = len(ids)
    for job_id in db.session.scalars(select(Job.job_id).where(Job.id.in_(ids[:SAMPLE]))):
        report.note(job_id)
    if dry_run or not ids or export_path is None:
        return _timed(report, started)

    def batches() -> Iterator[list[Any]]:
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            yield list(
                db.session.execute(select(*COLUMNS).where(Job.id.in_(chunk)).order_by(Job.id))
            )

    try:
        written = _write_export(export_path, kind, batches())
    except OSError as exc:
        transactions.rollback()
        raise MaintenanceError(
            f"the export could not be written ({exc}); nothing was deleted"
        ) from exc
    if written != len(ids):
        raise MaintenanceError("the export is incomplete; nothing was deleted")
    report.export_path = str(export_path)

    deleted = 0
    try:
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            # The condition again: a row that changed since its export stays.
            gone = db.session.scalars(
                delete(Job)
                .where(Job.id.in_(chunk), condition)
                .returning(Job.job_id)
                .execution_options(synchronize_session=False)
            ).all()
            if gone:
                db.session.execute(delete(JobEvent).where(JobEvent.job_id.in_(gone)))
                db.session.execute(delete(DownloadLog).where(DownloadLog.job_id.in_(gone)))
            deleted += len(gone)
        log_action(
            actor, "archive", str(export_path), f"{deleted} jobs older than {older_than_days} days"
        )
        transactions.commit()
    except Exception:
        transactions.rollback()
        raise
    report.counts["jobs"] = deleted
    report.counts["exported"] = written
    return _timed(report, started)


def default_archive_path(app: Flask, now: dt.datetime | None = None, kind: str = "jsonl") -> Path:
    """Where the scheduled archive writes: ARCHIVE_DIR (default instance/archives)."""
    folder = Path(app.config.get("ARCHIVE_DIR") or Path(app.instance_path) / "archives")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = (now or utcnow()).strftime("%Y%m%d-%H%M%S")
    return folder / f"jobs-{stamp}.{kind}"


# The daily run and the revenue report -------------------------------------------------------


def run_scheduled(*, dry_run: bool = False, now: dt.datetime | None = None) -> list[Report]:
    """What the daily job does: expired files, leftovers, and the archive when it is turned on."""
    app = _app()
    now = now or utcnow()
    reports = [
        cleanup_expired_files(dry_run=dry_run, now=now),
        remove_leftovers(dry_run=dry_run, now=now),
    ]
    days = int(settings.get("ARCHIVE_AFTER_DAYS"))
    if days > 0:
        reports.append(
            archive_jobs(
                older_than_days=days,
                export_path=None if dry_run else default_archive_path(app, now),
                include_abandoned=bool(settings.get("ARCHIVE_ABANDONED")),
                dry_run=dry_run,
                now=now,
                actor="scheduler",
            )
        )
    if not dry_run:
        log_action("scheduler", "maintenance", "", "; ".join(r.summary() for r in reports))
        transactions.commit()
    return reports


def revenue_report(days: int, now: dt.datetime | None = None) -> list[DayRevenue]:
    """The seed's revenue query over the last `days` days (today included)."""
    if days < 1:
        raise MaintenanceError("--days must be at least 1")
    today = (now or utcnow()).date()
    since = dt.datetime.combine(today - dt.timedelta(days=days - 1), dt.time())
    until = dt.datetime.combine(today + dt.timedelta(days=1), dt.time())
    return revenue_by_day(since, until)


@dataclass(frozen=True)
class ArchiveOptions:
    """What the admin chose for an archive: age in days, abandoned checkouts, export format."""

    older_than_days: int
    include_abandoned: bool = False
    kind: str = "jsonl"


OPERATION_NAMES = ("cleanup", "leftovers", "archive")


def run_operation(
    operation: str,
    *,
    dry_run: bool,
    admin: str,
    request_id: str | None = None,
    archive: ArchiveOptions | None = None,
) -> Report:
    """Run one operation of the maintenance page; a real run is in the audit log, a dry run
    changes nothing. MaintenanceError (nothing changed) when it cannot be done."""
    try:
        if operation == "cleanup":
            report = cleanup_expired_files(dry_run=dry_run)
        elif operation == "leftovers":
            report = remove_leftovers(dry_run=dry_run)
        else:
            options = archive or ArchiveOptions(int(settings.get("ARCHIVE_AFTER_DAYS")))
            report = archive_jobs(
                older_than_days=options.older_than_days,
                export_path=None if dry_run else default_archive_path(_app(), kind=options.kind),
                include_abandoned=options.include_abandoned,
                dry_run=dry_run,
                actor=admin,
            )
    except MaintenanceError:
        transactions.rollback()
        raise
    if dry_run:
        transactions.rollback()
    else:
        log_action(admin, f"maintenance_{operation}", "", report.summary(), request_id)
        transactions.commit()
    return report
