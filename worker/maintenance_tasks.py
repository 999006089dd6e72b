"""The daily maintenance run in RQ's scheduler: expired files, leftovers, and the archive.

One run a day at MAINTENANCE_AT (UTC, default 03:30; `off` turns it off). Each run schedules the
next, and every worker schedules the next at start; the RQ job id names the day, so however many
workers there are, a day has one run. Without the scheduler, cron can run the same command:
`30 3 * * * cd /srv/smi && .venv/bin/flask --app wsgi smi maintenance`.
"""

from __future__ import annotations

import datetime as dt
import logging

from redis import Redis
from rq import Queue
from rq.exceptions import DuplicateJobError

from storefront.queues import DEFAULT_QUEUE
from worker.context import task_context

log = logging.getLogger("smi.worker")


def next_run(at: str, now: dt.datetime | None = None) -> dt.datetime:
    """The next time of day `at` ("HH:MM", UTC) after `now`, as an aware UTC datetime."""
    hours, minutes = (int(part) for part in at.split(":"))
    now = now or dt.datetime.now(dt.UTC)
    run = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    return run if run > now else run + dt.timedelta(days=1)


def schedule_maintenance(redis_url: str, at: str, now: dt.datetime | None = None) -> bool:
    """Schedule the next daily run at `at` (MAINTENANCE_AT), once per day whatever the worker
    count; False if already scheduled, or `off`."""
    at = at.strip()
    if at.lower() == "off":
        return False
    run_at = next_run(at, now)
    connection = Redis.from_url(redis_url)
    try:
        Queue(DEFAULT_QUEUE, connection=connection).enqueue_at(
            run_at,
            run_maintenance,
            job_id=f"maintenance-{run_at:%Y-%m-%d}",
            unique=True,
            job_timeout=3600,
            result_ttl=7 * 24 * 3600,
            failure_ttl=7 * 24 * 3600,
        )
    except DuplicateJobError:
        return False
    finally:
        connection.close()
    log.info("maintenance scheduled for %s", run_at.isoformat())
    return True


def run_maintenance() -> str:
    """Run the day's maintenance (with the settings saved in the admin), then schedule the next."""
    from storefront.maintenance.operations import run_scheduled

    with task_context() as app:
        try:
            return "; ".join(report.summary() for report in run_scheduled())
        finally:
            schedule_maintenance(app.config["REDIS_URL"], app.config["MAINTENANCE_AT"])
