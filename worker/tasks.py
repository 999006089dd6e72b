"""RQ entry points: each builds the app context and calls one function that does the work."""

from __future__ import annotations

import logging

from storefront.queues import redis_connection
from worker.context import task_context
from worker.schedule import (
    MAINTENANCE_CLAIM_SECONDS,
    extends_the_chain,
    maintenance_slot_key,
    schedule_maintenance,
    schedule_sweep,
    slot_claimed,
    sweep_slot_key,
    triggered_at,
)

log = logging.getLogger("smi.worker")


def process_job(job_id: str) -> str:
    """Upscale one paid job (the `upscale` queue)."""
    from worker.upscaling import upscale_job

    with task_context(job_id):
        return upscale_job(job_id)


def send_job_email(kind: str, job_id: str, outbox_id: str = "") -> str:
    """Send one email about a job (the `default` queue), the one of outbox row `outbox_id`; or a
    buyer's "My orders" sign-in email, which the outbox carries too."""
    from storefront.buyers.sign_in import EMAIL_KIND, deliver_sign_in_email
    from storefront.jobs.emails import deliver

    if kind == EMAIL_KIND:
        with task_context():
            return deliver_sign_in_email(int(outbox_id))
    with task_context(job_id):
        return deliver(kind, job_id, outbox_id)


def make_sample(attachment_id: str, resolution: str) -> str:
    """Make an image's before/after sample at one resolution (the low-priority `samples` queue)."""
    from worker.samples import make_sample as make

    with task_context() as app:
        return make(app, int(attachment_id), resolution)


def check_upsampler(job_id: str, attempt: str = "0") -> str:
    """Ask Upsampler about a job (after its callback, or as the polling safety net)."""
    from worker.upsampler import check

    with task_context(job_id):
        return check(job_id, int(attempt))


def sweep() -> str:
    """Run the sweeper once in this slot (a run that finds its slot taken returns at once), then
    schedule the next run if this one came from `python -m worker`'s schedule."""
    from storefront.funnel import fold_buffered_views
    from storefront.jobs.recovery import sweep as run_sweep
    from storefront.maintenance.alerts import watch_from_worker
    from storefront.maintenance.system import record_sweep

    with task_context() as app:
        interval = int(app.config["SWEEP_INTERVAL_SECONDS"])
        try:
            key = sweep_slot_key(interval, triggered_at())
            with slot_claimed(redis_connection(app), key, ttl=2 * interval) as claimed:
                if not claimed:
                    return f"skipped: {key} was taken"
                try:
                    summary = run_sweep().summary()
                    views = fold_buffered_views(redis_connection(app))
                    summary += f", image views folded {views}"
                finally:
                    watch_from_worker(app)  # storage and database from here, then the alerts
                record_sweep(redis_connection(app), summary)
                return f"swept {key}: {summary}"
        finally:
            if extends_the_chain():
                schedule_sweep(app.config["REDIS_URL"], interval)


def run_maintenance() -> str:
    """Run the day's maintenance once (with the settings saved in the admin; a run that finds
    the day taken returns at once), then schedule the next if `python -m worker` scheduled this."""
    from storefront.maintenance.operations import run_scheduled

    with task_context() as app:
        if app.config["MAINTENANCE_AT"] == "off":
            log.info("maintenance is off (MAINTENANCE_AT), skipped")
            return "skipped: maintenance is off"
        try:
            key = maintenance_slot_key(app.config["MAINTENANCE_AT"], triggered_at())
            with slot_claimed(redis_connection(app), key, ttl=MAINTENANCE_CLAIM_SECONDS) as claimed:
                if not claimed:
                    return f"skipped: {key} was taken"
                return "; ".join(report.summary() for report in run_scheduled())
        finally:
            if extends_the_chain():
                schedule_maintenance(app.config["REDIS_URL"], app.config["MAINTENANCE_AT"])
