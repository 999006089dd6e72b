"""`flask smi …` commands."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from storefront.catalog import seed_demo
from storefront.jobs import get_job
from storefront.models import Job


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


def _with_saved_settings() -> None:
    """Apply the settings saved in the admin area, as web requests and tasks do."""
    from storefront.backoffice.settings_store import apply_setting_overrides

    apply_setting_overrides(current_app._get_current_object())  # type: ignore[attr-defined]


def _job_or_fail(job_id: str) -> Job:
    _with_saved_settings()

    job = get_job(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    return job


@smi.command("sweep")
@with_appcontext
def sweep_command() -> None:
    """Put stuck jobs back on their way (the scheduler also runs this every few minutes)."""
    from worker.sweeper import sweep

    _with_saved_settings()
    report = sweep()
    click.echo(f"Sweep done: {report.summary()}.")


@smi.command("requeue")
@click.argument("job_id")
@with_appcontext
def requeue_command(job_id: str) -> None:
    """Put a paid job that is pending back on the upscale queue."""
    from storefront.fulfilment import enqueue_processing

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
    """Email the buyer a fresh download link (a new token and expiry; the old link stops)."""
    from storefront.delivery import renew_link
    from storefront.extensions import db
    from storefront.fulfilment import enqueue_email

    job = _job_or_fail(job_id)
    if not renew_link(job.job_id, actor="cli"):
        raise click.ClickException(
            "only a paid, completed job whose file is still kept can get a fresh link"
        )
    db.session.commit()
    enqueue_email("link", job.job_id, unique=False)
    click.echo(f"A fresh link for job {job.job_id} is on its way to {job.email}.")


from storefront.admin import cli as _admin_cli  # noqa: E402, F401  registers admin commands
