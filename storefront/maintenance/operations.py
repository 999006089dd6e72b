"""Running the maintenance operations: the daily run, and one run from the maintenance page."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import Flask, current_app

from storefront import settings, transactions
from storefront.accounts.audit import log_action
from storefront.maintenance.archive import archive_jobs, default_archive_path
from storefront.maintenance.cleanup import (
    cleanup_expired_files,
    forget_old_sign_ins,
    remove_leftovers,
)
from storefront.maintenance.report import MaintenanceError, Report
from storefront.models import utcnow


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined]


def run_scheduled(*, dry_run: bool = False, now: dt.datetime | None = None) -> list[Report]:
    """What the daily job does: expired files, leftovers, old "My orders" sign-in links, and the
    archive when it is turned on."""
    app = _app()
    now = now or utcnow()
    reports = [
        cleanup_expired_files(dry_run=dry_run, now=now),
        remove_leftovers(dry_run=dry_run, now=now),
        forget_old_sign_ins(dry_run=dry_run, now=now),
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
