"""`flask smi` commands of the admin area: accounts, cleanup, archive, reports, maintenance."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from storefront import maintenance as ops
from storefront.backoffice.accounts import AccountError, create_admin
from storefront.backoffice.settings_store import apply_setting_overrides
from storefront.cli import smi
from storefront.formatting import format_money


def _apply_settings() -> None:
    apply_setting_overrides(current_app._get_current_object())  # type: ignore[attr-defined]


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


def _echo_report(report: ops.Report) -> None:
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
    _apply_settings()
    _echo_report(ops.cleanup_expired_files(dry_run=dry_run, grace_hours=grace_hours))
    _echo_report(ops.remove_leftovers(dry_run=dry_run))


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
            ops.export_format(export)
        except ops.MaintenanceError as exc:
            raise click.UsageError(str(exc)) from exc
    try:
        report = ops.archive_jobs(
            older_than_days=older_than,
            export_path=export,
            include_abandoned=include_abandoned,
            dry_run=dry_run,
            actor="cli",
        )
    except ops.MaintenanceError as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_report(report)


@smi.command("maintenance")
@click.option("--dry-run", is_flag=True, help="Count what would be done; change nothing.")
@with_appcontext
def maintenance_command(dry_run: bool) -> None:
    """Run what the daily job runs (for cron, instead of the RQ scheduler)."""
    _apply_settings()
    for report in ops.run_scheduled(dry_run=dry_run):
        _echo_report(report)


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
    """Revenue per day, net of refunds (the plugin's revenue query)."""
    currency = str(current_app.config.get("CURRENCY", "usd"))
    rows = ops.revenue_report(days)
    click.echo(f"{'day':<12}{'jobs':>6}{'charged':>14}{'refunded':>14}{'revenue':>14}")
    for row in rows:
        click.echo(
            f"{row.day.isoformat():<12}{row.jobs:>6}"
            f"{format_money(row.charged, currency):>14}{format_money(row.refunded, currency):>14}"
            f"{format_money(row.revenue, currency):>14}"
        )
    jobs = sum(row.jobs for row in rows)
    charged = sum((row.charged for row in rows), ops.Decimal("0.00"))
    refunded = sum((row.refunded for row in rows), ops.Decimal("0.00"))
    click.echo(
        f"{'total':<12}{jobs:>6}{format_money(charged, currency):>14}"
        f"{format_money(refunded, currency):>14}{format_money(charged - refunded, currency):>14}"
    )
