"""`flask smi …`: the command line of the shop, registered on the app by the factory."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from storefront.accounts.admins import AccountError, create_admin, unlock_admin
from storefront.catalog.library import seed_demo
from storefront.formatting import format_money
from storefront.jobs.samples import queue_missing_samples
from storefront.jobs.state import get_job
from storefront.maintenance.archive import archive_jobs, export_format
from storefront.maintenance.cleanup import cleanup_expired_files, remove_leftovers
from storefront.maintenance.operations import run_scheduled
from storefront.maintenance.report import MaintenanceError, Report
from storefront.models import Job
from storefront.reports.dashboard import revenue_report


@click.group()
def smi() -> None:
    """Sell My Images maintenance commands."""


@smi.command("seed-demo")
@with_appcontext
def seed_demo_command() -> None:
    """Create the demo catalog unless the catalog already has content."""
    added = seed_demo(current_app._get_current_object())  # type: ignore[attr-defined]
    if added:
        click.echo(f"Demo catalog created: {added} images.")
    else:
        click.echo("The catalog already has content; nothing to do.")


@smi.command("queue-samples")
@with_appcontext
def queue_samples_command() -> None:
    """Queue every before/after sample not made yet (image pages also ask for theirs)."""
    queued = queue_missing_samples(current_app._get_current_object())  # type: ignore[attr-defined]
    click.echo(f"Before/after samples queued: {queued}.")


def _job_or_fail(job_id: str) -> Job:
    job = get_job(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    return job


@smi.command("sweep")
@with_appcontext
def sweep_command() -> None:
    """Put stuck jobs back on their way (the scheduler also runs this every few minutes)."""
    from storefront.funnel import fold_buffered_views
    from storefront.jobs.recovery import sweep
    from storefront.queues import redis_connection

    report = sweep()
    views = fold_buffered_views(redis_connection(current_app._get_current_object()))  # type: ignore[attr-defined]
    click.echo(f"Sweep done: {report.summary()}, image views folded {views}.")


@smi.command("requeue")
@click.argument("job_id")
@with_appcontext
def requeue_command(job_id: str) -> None:
    """Put a paid job that is pending back on the upscale queue."""
    from storefront.jobs.queueing import enqueue_processing

    job = _job_or_fail(job_id)
    if job.status != "pending" or job.payment_status != "paid":
        raise click.ClickException(
            "only a paid, pending job can be requeued; "
            f"this one is {job.status}/{job.payment_status}"
        )
    if enqueue_processing(job.job_id):
        click.echo(f"Job {job.job_id} is queued.")
    else:
        click.echo(f"Job {job.job_id} is already queued or running (or Redis is down).")


@smi.command("resend")
@click.argument("job_id")
@with_appcontext
def resend_command(job_id: str) -> None:
    """Email the buyer a fresh download link (the old link works until the new one is sent)."""
    from storefront.jobs.delivery import resend_link

    job = _job_or_fail(job_id)
    if not resend_link(job.job_id, actor="cli"):
        raise click.ClickException(
            "only a paid, completed job whose file is still kept can get a fresh link"
        )
    click.echo(f"A fresh link for job {job.job_id} is on its way to {job.email}.")


@smi.command("create-admin")
@click.option("--email", prompt=True, help="The admin's email (their sign-in name).")
@click.option("--name", default="", help="The name shown in the audit log (default: from email).")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    envvar="SMI_NEW_ADMIN_PASSWORD",
    help="Asked for when not given (or read from SMI_NEW_ADMIN_PASSWORD).",
)
@click.option("--reset-password", is_flag=True, help="Set a new password for an existing admin.")
@with_appcontext
def create_admin_command(email: str, name: str, password: str, reset_password: bool) -> None:
    """Create an admin account, or reset an admin's password."""
    try:
        user = create_admin(email, password, name, reset=reset_password)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    verb = "Password set for" if reset_password else "Admin created:"
    click.echo(f"{verb} {user.email} ({user.name}).")


@smi.command("unlock-admin")
@click.option("--email", required=True, help="The admin whose failed sign-ins to forget.")
@click.option("--address", default=None, help="Also clear this IP address's failures and lock.")
@with_appcontext
def unlock_admin_command(email: str, address: str | None) -> None:
    """Clear an admin's failed sign-ins and, with --address, an address's and its lock."""
    try:
        unlocked = unlock_admin(email, address, actor="cli")
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in unlocked.lines():
        click.echo(line)


def _echo_report(report: Report) -> None:
    click.echo(report.summary())
    if report.dry_run and report.sample:
        for item in report.sample[:20]:
            click.echo(f"  {item}")
        if len(report.sample) > 20:
            click.echo("  …")


@smi.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
@click.option(
    "--grace-hours",
    type=click.IntRange(0, 8760),
    default=None,
    help="Keep expired files this long (default: CLEANUP_GRACE_HOURS, 48).",
)
@with_appcontext
def cleanup_command(dry_run: bool, grace_hours: int | None) -> None:
    """Remove expired download files, failed jobs' leftovers and old temporary files."""
    _echo_report(cleanup_expired_files(dry_run=dry_run, grace_hours=grace_hours))
    _echo_report(remove_leftovers(dry_run=dry_run))


@smi.command("archive")
@click.option(
    "--older-than",
    "older_than",
    type=click.IntRange(1, 36500),
    required=True,
    metavar="DAYS",
    help="Archive finished jobs created more than DAYS days ago.",
)
@click.option(
    "--export",
    "export",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write them here first: .csv or .jsonl (JSON Lines). Required unless --dry-run.",
)
@click.option(
    "--include-abandoned",
    is_flag=True,
    help="Archive abandoned checkouts too (kept for the funnel by default).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be archived; change nothing.")
@with_appcontext
def archive_command(
    older_than: int, export: Path | None, include_abandoned: bool, dry_run: bool
) -> None:
    """Export old job records, then delete them; nothing is deleted if the export fails."""
    if export is None and not dry_run:
        raise click.UsageError("--export FILE is required (or use --dry-run)")
    if export is not None:
        try:
            export_format(export)
        except MaintenanceError as exc:
            raise click.UsageError(str(exc)) from exc
    try:
        report = archive_jobs(
            older_than_days=older_than,
            export_path=export,
            include_abandoned=include_abandoned,
            dry_run=dry_run,
            actor="cli",
        )
    except MaintenanceError as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_report(report)


@smi.command("maintenance")
@click.option("--dry-run", is_flag=True, help="Count what would be done; change nothing.")
@with_appcontext
def maintenance_command(dry_run: bool) -> None:
    """Run what the daily job runs (for cron, instead of the RQ scheduler)."""
    for report in run_scheduled(dry_run=dry_run):
        _echo_report(report)


@smi.command("check-alerts")
@with_appcontext
def check_alerts_command() -> None:
    """Check every alert condition and mail ADMIN_EMAIL what started or cleared (for cron)."""
    from storefront.maintenance.alerts import check_alerts

    mailed = check_alerts(current_app._get_current_object())  # type: ignore[attr-defined]
    click.echo(f"Alerts checked: {', '.join(mailed) if mailed else 'nothing to mail'}.")


@smi.group("report")
def report_group() -> None:
    """Reports."""


@report_group.command("revenue")
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=30,
    show_default=True,
    help="How many days back, today included.",
)
@with_appcontext
def revenue_command(days: int) -> None:
    """Revenue per day, net of tax and refunds (the plugin's revenue query, less tax)."""
    currency = str(current_app.config["CURRENCY"])
    rows = revenue_report(days)
    click.echo(f"{'day':<12}{'jobs':>6}{'charged':>14}{'tax':>14}{'refunded':>14}{'revenue':>14}")
    for row in rows:
        click.echo(
            f"{row.day.isoformat():<12}{row.jobs:>6}"
            f"{format_money(row.charged, currency):>14}{format_money(row.tax, currency):>14}"
            f"{format_money(row.refunded, currency):>14}{format_money(row.revenue, currency):>14}"
        )
    jobs = sum(row.jobs for row in rows)
    charged = sum((row.charged for row in rows), Decimal("0.00"))
    tax = sum((row.tax for row in rows), Decimal("0.00"))
    refunded = sum((row.refunded for row in rows), Decimal("0.00"))
    click.echo(
        f"{'total':<12}{jobs:>6}{format_money(charged, currency):>14}"
        f"{format_money(tax, currency):>14}{format_money(refunded, currency):>14}"
        f"{format_money(charged - tax - refunded, currency):>14}"
    )
