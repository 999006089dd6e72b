"""The periodic work on RQ's cron: `rq cron worker.cron`, in one or more processes.

RQ imports this module to learn its jobs, so registering them here at import is the point of it.
The settings are the workers' own: the app factory reads them from the environment and `.env`.
Redis is the one `rq cron` connects to (`REDIS_URL` in its environment, or `--url`). Each run
claims its slot (see worker.schedule), so several of these processes, alongside `python -m worker`
and its own schedule, still give a slot one run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rq import cron

from storefront import create_app
from storefront.queues import DEFAULT_QUEUE
from worker.schedule import CRON_META, maintenance_cron
from worker.tasks import run_maintenance, sweep

log = logging.getLogger("smi.worker")


def register(config: Mapping[str, Any]) -> None:
    """Register the sweeper and (unless `off`) the daily maintenance with RQ's cron."""
    interval = int(config["SWEEP_INTERVAL_SECONDS"])
    # A sweep still queued when the next is due is dropped (`ttl`): no pile-up while the workers
    # are away.
    cron.register(
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
    cron.register(
        run_maintenance,
        DEFAULT_QUEUE,
        cron=maintenance_cron(at),
        job_timeout=3600,
        result_ttl=7 * 24 * 3600,
        failure_ttl=7 * 24 * 3600,
        meta=dict(CRON_META),
    )
    log.info("cron: sweep every %ss; daily maintenance at %s UTC", interval, at)


register(create_app().config)
