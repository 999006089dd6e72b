"""RQ entry points: each builds the app context and calls one function that does the work."""

from __future__ import annotations

import logging

from worker.context import task_context
from worker.schedule import schedule_maintenance, schedule_sweep

log = logging.getLogger("smi.worker")


def process_job(job_id: str) -> str:
    """Upscale one paid job (the `upscale` queue)."""
    from worker.upscaling import upscale_job

    with task_context():
        return upscale_job(job_id)


def send_job_email(kind: str, job_id: str, outbox_id: str = "") -> str:
    """Send one email about a job (the `default` queue), the one of outbox row `outbox_id`."""
    from storefront.jobs.emails import deliver

    with task_context():
        return deliver(kind, job_id, outbox_id)


def check_upsampler(job_id: str, attempt: str = "0") -> str:
    """Ask Upsampler about a job (after its callback, or as the polling safety net)."""
    from worker.upsampler import check

    with task_context():
        return check(job_id, int(attempt))


def sweep() -> str:
    """Run the sweeper once, then schedule its next run."""
    from storefront.jobs.recovery import sweep as run_sweep

    with task_context() as app:
        try:
            return run_sweep().summary()
        finally:
            schedule_sweep(app.config["REDIS_URL"], int(app.config["SWEEP_INTERVAL_SECONDS"]))


def run_maintenance() -> str:
    """Run the day's maintenance (with the settings saved in the admin), then schedule the next."""
    from storefront.maintenance.operations import run_scheduled

    with task_context() as app:
        try:
            return "; ".join(report.summary() for report in run_scheduled())
        finally:
            schedule_maintenance(app.config["REDIS_URL"], app.config["MAINTENANCE_AT"])
