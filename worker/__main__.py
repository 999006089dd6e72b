"""Start an RQ worker on the `upscale`, `default` and `samples` queues (in that order: paid work
first), with the scheduler.

It also schedules the sweeper and the daily maintenance in RQ's scheduler (see worker.schedule);
`python -m worker.cron` does the same for any kind of worker, and goes on after Redis restarts.
"""

from __future__ import annotations

import argparse

from redis import Redis
from rq import Worker

from storefront import create_app
from storefront.queues import DEFAULT_QUEUE, SAMPLES_QUEUE, UPSCALE_QUEUE
from worker.schedule import schedule_maintenance, schedule_sweep


def main(argv: list[str] | None = None) -> None:
    """Run a worker until it is told to stop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="Redis URL (default: REDIS_URL)")
    parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    parser.add_argument("--name", help="worker name")
    parser.add_argument("queues", nargs="*", default=[UPSCALE_QUEUE, DEFAULT_QUEUE, SAMPLES_QUEUE])
    args = parser.parse_args(argv)
    config = create_app().config  # the settings tasks will run with; tasks build their own app
    url = args.url or config["REDIS_URL"]
    connection = Redis.from_url(url)
    schedule_sweep(url, int(config["SWEEP_INTERVAL_SECONDS"]))
    schedule_maintenance(url, config["MAINTENANCE_AT"])
    # The app itself is built lazily inside each job (see worker.context), after RQ forks.
    worker = Worker(args.queues, connection=connection, name=args.name)
    worker.work(with_scheduler=True, burst=args.burst, logging_level="INFO")


if __name__ == "__main__":
    main()
