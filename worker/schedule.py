"""The periodic work: the sweeper every SWEEP_INTERVAL_SECONDS, and the daily maintenance at
MAINTENANCE_AT (UTC, default 03:30; `off` turns it off), however the workers are started.

Two triggers, either or both:

- `python -m worker.cron`, one or more processes (worker/cron.py, deploy/systemd/smi-cron.service):
  RQ's cron enqueues both on the `default` queue, for any worker (`python -m worker` or plain
  `rq worker upscale default samples`), and goes on after Redis restarts empty, however long it
  is away (`rq cron worker.cron` does the same, but exits if Redis is away for more than a
  second or so).
- `python -m worker` schedules the next runs in RQ's scheduler when it starts, and each run it
  scheduled schedules the next. A Redis restart loses that chain until a worker starts again.

However many triggers fire, a run first claims its slot in Redis with SET NX and a TTL
(`smi:slot:sweep:<interval number>`, `smi:slot:maintenance:<date>`): the first run of a slot does
the work, any other returns at once and logs that the slot was taken. A run that fails gives its
slot back. The slot is that of the trigger (the RQ job's enqueue time), so a run that starts late
on a busy worker does not take the next trigger's slot. `flask smi sweep` and
`flask smi maintenance` run the same work by hand, unclaimed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from rq import Queue, get_current_job
from rq.exceptions import DuplicateJobError

from storefront.queues import DEFAULT_QUEUE

log = logging.getLogger("smi.worker")

# Marks the RQ jobs that `rq cron` enqueues: their runs do not extend the chain of scheduled runs.
CRON_META = {"smi_trigger": "rq cron"}
MAINTENANCE_CLAIM_SECONDS = 2 * 24 * 3600


def sweep_slot_key(interval: int, now: dt.datetime | None = None) -> str:
    """The claim key of the sweep slot (the interval of SWEEP_INTERVAL_SECONDS) holding `now`."""
    now = now or dt.datetime.now(dt.UTC)
    return f"smi:slot:sweep:{int(now.timestamp()) // interval}"


def maintenance_slot_key(at: str, now: dt.datetime | None = None) -> str:
    """The claim key of the day whose maintenance time `at` ("HH:MM", UTC) is nearest `now`, so
    that a run a little early or late (even across midnight) claims the right day."""
    now = now or dt.datetime.now(dt.UTC)
    upcoming = next_run(at, now)
    previous = upcoming - dt.timedelta(days=1)
    nearest = upcoming if upcoming - now < now - previous else previous
    return f"smi:slot:maintenance:{nearest:%Y-%m-%d}"


@contextmanager
def slot_claimed(connection: Redis, key: str, ttl: int) -> Iterator[bool]:
    """Claim slot `key` for this run and say whether it got it; a run that fails gives it back."""
    claimed = bool(connection.set(key, current_job_id() or "direct", nx=True, ex=ttl))
    if not claimed:
        log.info("%s: slot taken by another run, skipped (rq job %s)", key, current_job_id())
    try:
        yield claimed
    except BaseException:
        if claimed:
            connection.delete(key)
        raise


def triggered_at() -> dt.datetime:
    """When this run was triggered: its RQ job's enqueue time (the cron's tick, or when RQ's
    scheduler queued it), or now for a call outside RQ."""
    job = get_current_job()
    enqueued = job.enqueued_at if job is not None else None
    if enqueued is None:
        return dt.datetime.now(dt.UTC)
    return enqueued if enqueued.tzinfo else enqueued.replace(tzinfo=dt.UTC)


def current_job_id() -> str | None:
    """The id of the RQ job this code runs in, if any."""
    job = get_current_job()
    return job.id if job is not None else None


def extends_the_chain() -> bool:
    """Whether this run should schedule the next one: not when `rq cron` enqueued it (the
    cron enqueues the next itself), else yes (a run `python -m worker` scheduled, or a call)."""
    job = get_current_job()
    return job is None or job.meta.get("smi_trigger") != CRON_META["smi_trigger"]


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


def maintenance_cron(at: str, now: dt.datetime | None = None) -> str:
    """The cron string for the daily run at `at` (UTC). RQ's cron reads cron strings in the
    process's local time, so this is `at` in the local time zone as of the next run (the unit
    runs with TZ=UTC, where a daylight-saving change cannot move it)."""
    local = next_run(at, now).astimezone()
    return f"{local.minute} {local.hour} * * *"
