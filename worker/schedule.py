"""The periodic work in RQ's scheduler: the sweeper every SWEEP_INTERVAL_SECONDS, and the daily
maintenance at MAINTENANCE_AT (UTC, default 03:30; `off` turns it off).

Every worker schedules the next runs when it starts, and each run schedules the next. The RQ job id
names the time slot (or the day), so however many workers there are, a slot has one run. Without
the scheduler, cron can run the same maintenance:
`30 3 * * * cd /srv/smi && .venv/bin/flask --app wsgi smi maintenance`.
"""

from __future__ import annotations

import datetime as dt
import logging

from redis import Redis
from rq import Queue
from rq.exceptions import DuplicateJobError

from storefront.queues import DEFAULT_QUEUE

log = logging.getLogger("smi.worker")


def schedule_sweep(redis_url: str, interval: int) -> bool:
    """Schedule the next sweep in RQ's scheduler, once per time slot whatever the worker count."""
    slot = int(dt.datetime.now(dt.UTC).timestamp()) // interval + 1
    connection = Redis.from_url(redis_url)
    try:
        Queue(DEFAULT_QUEUE, connection=connection).enqueue_at(
            dt.datetime.fromtimestamp(slot * interval, dt.UTC),
            "worker.tasks.sweep",
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
            "worker.tasks.run_maintenance",
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
