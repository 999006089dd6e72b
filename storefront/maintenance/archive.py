"""Archiving old job records: exported to CSV or JSON Lines first, deleted only once the export
is safely on disk.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import ColumnElement, and_, delete, or_, select

from storefront import transactions
from storefront.accounts.audit import log_action
from storefront.extensions import db
from storefront.maintenance.report import SAMPLE, MaintenanceError, Report, finish
from storefront.models import DownloadLog, Job, JobEvent, utcnow
from storefront.reports.job_list import csv_value

BATCH = 500
EXPORT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


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
                        # As the job list's CSV: text a spreadsheet would run is made plain.
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
    kind = "jsonl" if dry_run else _check_export_target(export_path)
    report = Report("archive", dry_run)
    ids = list(db.session.scalars(select(Job.id).where(condition).order_by(Job.id)))
    report.counts["jobs"] = len(ids)
    for job_id in db.session.scalars(select(Job.job_id).where(Job.id.in_(ids[:SAMPLE]))):
        report.note(job_id)
    if dry_run or not ids or export_path is None:
        return finish(report, started)

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
    deleted = _delete_archived(ids, condition)
    log_action(
        actor, "archive", str(export_path), f"{deleted} jobs older than {older_than_days} days"
    )
    transactions.commit()
    report.counts["jobs"] = deleted
    report.counts["exported"] = written
    return finish(report, started)


def _check_export_target(export_path: Path | None) -> str:
    """The export's format; MaintenanceError when there is none, or it would overwrite a file."""
    if export_path is None:
        raise MaintenanceError("archiving needs an export file (--export FILE)")
    kind = export_format(export_path)
    if export_path.exists():
        raise MaintenanceError(f"{export_path} exists already; choose a new file name")
    if not export_path.parent.is_dir():
        raise MaintenanceError(f"the folder {export_path.parent} does not exist")
    return kind


@transactions.atomic
def _delete_archived(ids: list[int], condition: ColumnElement[bool]) -> int:
    """Delete the exported jobs with their timeline and download log (the caller commits)."""
    deleted = 0
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
    return deleted


def default_archive_path(app: Flask, now: dt.datetime | None = None, kind: str = "jsonl") -> Path:
    """Where the scheduled archive writes: ARCHIVE_DIR (default instance/archives)."""
    folder = Path(app.config["ARCHIVE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    stamp = (now or utcnow()).strftime("%Y%m%d-%H%M%S")
    return folder / f"jobs-{stamp}.{kind}"
