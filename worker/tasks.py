"""RQ entry points: each builds the app context and calls one function that does the work."""

from __future__ import annotations

import datetime as dt
import logging

from rq import Queue
from rq.exceptions import DuplicateJobError

from worker.context import task_context

log = logging.getLogger("smi.worker")


def process_job(job_id: str) -> str:
    """Upscale one paid job (the `upscale` queue)."""
    from worker.upscaling import upscale_job

    with task_context():
        return upscale_job(job_id)


def send_job_email(kind: str, job_id: str) -> str:
    """Send one email about a job (the `default` queue)."""
    from storefront.jobs.emails import deliver

    with task_context():
        return deliver(kind, job_id)


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


def schedule_sweep(redis_url: str, interval: int) -> bool:
    """Schedule the next sweep in RQ's scheduler, once per time slot whatever the worker count."""
    from redis import Redis

    from storefront.queues import DEFAULT_QUEUE

    slot = int(dt.datetime.now(dt.UTC).timestamp()) // interval + 1
    connection = Redis.from_url(redis_url)
    try:
        Queue(DEFAULT_QUEUE, connection=connection).enqueue_at(
            dt.datetime.fromtimestamp(slot * interval, dt.UTC),
            sweep,
            job_id=f"sweep-{slot}",
            unique=True,
            job_timeout=600,
            result_ttl=3600,
        )
    except DuplicateJobError:
        return False
    finally:
        connection.close()
    return True
