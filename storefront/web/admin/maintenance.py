"""Maintenance: each operation first shows what it would do (a dry run), then runs on request."""

from __future__ import annotations

from pathlib import Path

from flask import (
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask.typing import ResponseReturnValue

from storefront import settings
from storefront.accounts.audit import already_done
from storefront.maintenance import operations as ops
from storefront.maintenance.archive import default_archive_path
from storefront.maintenance.report import MaintenanceError, Report
from storefront.web.admin.base import admin_name, bp, new_request_id

OPERATIONS = {
    "cleanup": (
        "Remove expired download files",
        "Delivered files whose link expired more than the grace period ago, and files of "
        "refunded or disputed jobs. A file whose link still works is never removed.",
    ),
    "leftovers": (
        "Remove leftovers and temporary files",
        "Files of failed jobs, partial outputs and temporary files older than a day.",
    ),
    "archive": (
        "Archive old job records",
        "Finished jobs older than the retention period are written to an export file, "
        "then deleted with their timeline and download log. Nothing is deleted if the export "
        "fails. Abandoned checkouts are kept for the funnel unless you include them.",
    ),
}


def _archive_dir() -> Path:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return default_archive_path(app).parent


def _archive_options() -> tuple[int, bool, str, list[str]]:
    source = request.form if request.method == "POST" else request.args
    errors = []
    default_days = int(settings.get("ARCHIVE_AFTER_DAYS") or 365)
    try:
        days = int(source.get("older_than", default_days))
        if not 1 <= days <= 3650:
            raise ValueError
    except ValueError:
        errors.append("Older than: enter a number of days from 1 to 3650.")
        days = default_days
    include_abandoned = source.get("include_abandoned") in ("1", "on", "true", "y")
    kind = source.get("format", "jsonl")
    if kind not in ("jsonl", "csv"):
        kind = "jsonl"
    return days, include_abandoned, kind, errors


def _run(operation: str, dry_run: bool, request_id: str | None = None) -> Report:
    days, include_abandoned, kind, _ = _archive_options()
    return ops.run_operation(
        operation,
        dry_run=dry_run,
        admin=admin_name(),
        request_id=request_id,
        archive=ops.ArchiveOptions(days, include_abandoned, kind),
    )


@bp.get("/maintenance")
def maintenance() -> ResponseReturnValue:
    """The operations, the schedule, and the archive files written so far."""
    folder = _archive_dir()
    archives = sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
        reverse=True,
    )
    return render_template(
        "admin/maintenance.html",
        operations=OPERATIONS,
        archives=[(p.name, p.stat().st_size) for p in archives[:50]],
    )


@bp.get("/maintenance/<operation>")
def maintenance_preview(operation: str) -> ResponseReturnValue:
    """A dry run: counts and examples of what the operation would do; nothing changes."""
    if operation not in OPERATIONS:
        abort(404)
    days, include_abandoned, kind, errors = _archive_options()
    report = _run(operation, dry_run=True)
    return render_template(
        "admin/maintenance_preview.html",
        operation=operation,
        title=OPERATIONS[operation][0],
        explanation=OPERATIONS[operation][1],
        report=report,
        request_id=new_request_id(),
        days=days,
        include_abandoned=include_abandoned,
        kind=kind,
        errors=errors,
    )


@bp.post("/maintenance/<operation>")
def maintenance_run(operation: str) -> ResponseReturnValue:
    """Run an operation for real, once per confirmation form."""
    if operation not in OPERATIONS:
        abort(404)
    request_id = request.form.get("request_id") or None
    if already_done(request_id):
        flash("This was done already: the form was sent twice, and run once.", "success")
        return redirect(url_for("admin.maintenance"), 303)
    *_, errors = _archive_options()
    if errors:
        flash(" ".join(errors), "error")
        return redirect(url_for("admin.maintenance_preview", operation=operation), 303)
    try:
        report = _run(operation, dry_run=False, request_id=request_id)
    except MaintenanceError as exc:
        flash(f"{OPERATIONS[operation][0]}: {exc}", "error")
        return redirect(url_for("admin.maintenance"), 303)
    flash(report.summary(), "success")
    return redirect(url_for("admin.maintenance"), 303)


@bp.get("/maintenance/archives/<name>")
def archive_download(name: str) -> ResponseReturnValue:
    """An archive file written by the archive operation."""
    return send_from_directory(_archive_dir(), name, as_attachment=True)
