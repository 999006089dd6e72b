"""The periodic work on RQ's cron: `python -m worker.cron`, in one or more processes.

`python -m worker.cron` runs RQ's CronScheduler with the jobs below and waits out Redis's absence,
however long it lasts. RQ's own `rq cron worker.cron` (which imports this module for its jobs)
registers the same jobs, but its loop catches no Redis error: when a Redis restart outlasts
redis-py's few retries (a second or so), it exits and needs its service manager to start it again.

The settings are the workers' own: the app factory reads them from the environment and `.env`.
Redis is `REDIS_URL` (or `--url`). Each run claims its slot (see worker.schedule), so several of
these processes, alongside `python -m worker` and its own schedule, still give a slot one run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import cron
from rq.cron import CronScheduler

from storefront import create_app
from storefront.queues import DEFAULT_QUEUE
from worker.schedule import CRON_META, maintenance_cron
from worker.tasks import run_maintenance, sweep

log = logging.getLogger("smi.worker")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)  # BusyLoadingError is a ConnectionError
LONGEST_PAUSE = 30.0  # seconds between tries while Redis stays away


class StopCron(Exception):
    """SIGTERM or SIGINT: stop after telling Redis, if it answers."""


def register(config: Mapping[str, Any], scheduler: CronScheduler | None = None) -> None:
    """Register the sweeper and (unless `off`) the daily maintenance with `scheduler`, or with
    RQ's module-level registry that `rq cron` reads."""
    add = scheduler.register if scheduler is not None else cron.register
    interval = int(config["SWEEP_INTERVAL_SECONDS"])
    # A sweep still queued when the next is due is dropped (`ttl`): no pile-up while the workers
    # are away.
    add(
        sweep,
        DEFAULT_QUEUE,
        interval=interval,
        ttl=interval,
        job_timeout=600,
        result_ttl=3600,
        meta=dict(CRON_META),
    )
    at = str(config["MAINTENANCE_AT"])
    if at == "off":
        log.info("cron: sweep every %ss; daily maintenance off", interval)
        return
    add(
        run_maintenance,
        DEFAULT_QUEUE,
        cron=maintenance_cron(at),
        job_timeout=3600,
        result_ttl=7 * 24 * 3600,
        failure_ttl=7 * 24 * 3600,
        meta=dict(CRON_META),
    )
    log.info("cron: sweep every %ss; daily maintenance at %s UTC", interval, at)


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise StopCron(signal.Signals(signum).name)


def run(scheduler: CronScheduler, longest_pause: float = LONGEST_PAUSE) -> None:
    """Run `scheduler` until SIGTERM or SIGINT: `CronScheduler.start`'s loop (enqueue what is
    due, heartbeat, sleep until the next), except that a Redis error pauses it instead of ending
    it. A job due while Redis was away is enqueued once Redis answers."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    registered = False
    down_since: float | None = None
    pause = 1.0
    try:
        while True:
            try:
                if not registered:
                    scheduler.register_birth()
                    registered = True
                if scheduler.enqueue_jobs():
                    scheduler.save()
                scheduler.heartbeat()  # also registers it again in a Redis that lost it
                wait = scheduler.calculate_sleep_interval()
                if down_since is not None:
                    log.info("cron: Redis answers again after %.0fs", time.monotonic() - down_since)
                    down_since, pause = None, 1.0
            except REDIS_DOWN as exc:
                if down_since is None:
                    down_since = time.monotonic()
                log.warning(
                    "cron: Redis unreachable (%s: %s); trying again in %.0fs",
                    type(exc).__name__,
                    exc,
                    pause,
                )
                wait, pause = pause, min(pause * 2, longest_pause)
            time.sleep(wait)
    except StopCron as stop:
        log.info("cron: %s, stopping", stop)
    finally:
        if registered:
            with contextlib.suppress(*REDIS_DOWN):
                scheduler.register_death()


def main(argv: list[str] | None = None) -> None:
    """Run the periodic work's scheduler until it is told to stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: REDIS_URL)")
    args = parser.parse_args(argv)
    config = create_app().config
    # Timeouts: a Redis that stops answering is waited out like one that is gone.
    connection = Redis.from_url(
        args.url or config["REDIS_URL"], socket_connect_timeout=5, socket_timeout=30
    )
    scheduler = CronScheduler(connection=connection, logging_level="INFO")
    scheduler.config_file = "worker.cron"  # as `rq cron worker.cron` records it
    register(config, scheduler)
    run(scheduler)


if __name__ == "__main__":
    main()
else:  # imported by `rq cron worker.cron`: RQ reads the jobs registered at import
    register(create_app().config)
