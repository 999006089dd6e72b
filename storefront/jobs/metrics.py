"""The shop's figures for Prometheus: counters and histograms kept in Redis, gauges read at scrape.

Web processes and RQ work horses, on any host, add to the same Redis hashes (one per metric, a
field per label set and sample, HINCRBYFLOAT in one MULTI), so one scrape of any web host's
`/metrics` shows the figures of every process (`storefront/web/metrics.py` serves them through
`ShopCollector`). Counting never breaks the money path: a Redis error is logged and swallowed,
and for a few seconds this app stops trying, so that an outage costs a request one timeout.

`count` counts at once (an email sent, an upscale timed); `count_on_commit` counts when the
session's transaction commits and forgets it on a rollback, so a payment or a refund is counted
once, with the commit that records it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job as RQJob
from sqlalchemy import event, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction

from storefront.extensions import db
from storefront.models import JOB_STATUSES, Job
from storefront.queues import DEFAULT_QUEUE, SAMPLES_QUEUE, UPSCALE_QUEUE, redis_connection

log = logging.getLogger("smi.metrics")

KEY_PREFIX = "smi:metrics:"
# After a Redis error, this app counts nothing for this long (the figures are lost either way).
QUIET_SECONDS = 10.0
_PENDING = "smi_metrics_pending"  # Session.info key: increments waiting for the commit


@dataclass(frozen=True)
class Shared:
    """A counter or histogram that every process adds to in Redis."""

    name: str  # a counter's name without `_total`
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds (+Inf is added)

    @property
    def key(self) -> str:
        """The Redis hash that holds it."""
        return KEY_PREFIX + self.name


CHECKOUTS_STARTED = Shared(
    "smi_checkouts_started", "Checkout Sessions started (jobs created)", ("resolution",)
)
PAYMENTS = Shared("smi_payments", "Jobs marked paid", ("resolution",))
WEBHOOK_EVENTS = Shared(
    "smi_webhook_events",
    "Stripe webhook deliveries by event type and outcome "
    "(processed, duplicate, rejected: bad signature or body, failed: answered 5xx)",
    ("type", "outcome"),
)
UPSCALE_SECONDS = Shared(
    "smi_upscale_seconds",
    "Time to make a delivered file: from reading the original to the file stored (local, "
    "neural), or from the submission to the result stored (upsampler)",
    ("engine", "resolution"),
    (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
EMAILS = Shared(
    "smi_emails", "Emails by kind and outcome (sent, failed, skipped)", ("kind", "outcome")
)
DOWNLOADS = Shared("smi_downloads", "Downloads counted against their links")
DOWNLOAD_BYTES = Shared("smi_download_bytes", "Bytes of delivered files served")
REFUNDS = Shared("smi_refunds", "Refunds recorded (full or partial)", ("kind",))
PROVIDER_CREDITS = Shared(
    "smi_provider_credits", "Upscaling provider credits used by completed jobs"
)

SHARED = (
    CHECKOUTS_STARTED,
    PAYMENTS,
    WEBHOOK_EVENTS,
    UPSCALE_SECONDS,
    EMAILS,
    DOWNLOADS,
    DOWNLOAD_BYTES,
    REFUNDS,
    PROVIDER_CREDITS,
)

Increment = tuple[str, str, float]  # Redis key, hash field, amount


def count(metric: Shared, amount: float = 1, **labels: object) -> None:
    """Add `amount` to a counter now; never raises."""
    _write(_counter_increments(metric, amount, labels))


def count_on_commit(metric: Shared, amount: float = 1, **labels: object) -> None:
    """Add `amount` to a counter when the session's transaction commits; a rollback forgets it."""
    increments = _counter_increments(metric, amount, labels)
    session = db.session()
    if not session.in_transaction():
        session.begin()  # so that a rollback before any statement forgets it too
    session.info.setdefault(_PENDING, []).extend(increments)


def observe(metric: Shared, value: float, **labels: object) -> None:
    """Record one observation of a histogram now; never raises."""
    values = _label_values(metric, labels)
    if values is None or not math.isfinite(value):
        return
    le = next((bound for bound in metric.buckets if value <= bound), math.inf)
    _write(
        [
            (metric.key, _field(f"le:{floatToGoString(le)}", values), 1),
            (metric.key, _field("sum", values), value),
            (metric.key, _field("count", values), 1),
        ]
    )


def _counter_increments(
    metric: Shared, amount: float, labels: dict[str, object]
) -> list[Increment]:
    values = _label_values(metric, labels)
    if values is None or not amount:
        return []
    return [(metric.key, _field("total", values), float(amount))]


def _label_values(metric: Shared, labels: dict[str, object]) -> list[str] | None:
    """The label values in declared order; None (logged) when they are not the declared ones."""
    if set(labels) != set(metric.labels):
        log.error("%s takes labels %s, got %s: not counted", metric.name, metric.labels, labels)
        return None
    return [str(labels[name])[:100] for name in metric.labels]


def _field(sample: str, values: list[str]) -> str:
    return json.dumps([sample, *values])


def _write(increments: list[Increment]) -> None:
    """Add the increments in one MULTI; a Redis error is logged and swallowed."""
    if not increments:
        return
    try:
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        if time.monotonic() < app.extensions.get("smi_metrics_quiet_until", 0.0):
            return
        pipe = redis_connection(app).pipeline(transaction=True)
        for key, field, amount in increments:
            pipe.hincrbyfloat(key, field, amount)
        pipe.execute()
    except RedisError as exc:
        app.extensions["smi_metrics_quiet_until"] = time.monotonic() + QUIET_SECONDS
        log.warning("metrics not counted, Redis unavailable: %s", type(exc).__name__)
    except Exception:
        log.exception("metrics not counted")


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    _write(session.info.pop(_PENDING, []))


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous: SessionTransaction) -> None:
    if previous.parent is None:  # the outermost transaction, not a savepoint
        session.info.pop(_PENDING, None)


# Reading them: one scrape


class ShopCollector:
    """prometheus_client collector of the shop's figures: the Redis counters and histograms, the
    jobs by status (one GROUP BY) and the RQ queues; a part that cannot be read is left out."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        """Every family, read now."""
        try:
            yield from shared_families(self.app)
        except RedisError as exc:
            log.warning("shared metrics unreadable, Redis unavailable: %s", type(exc).__name__)
        try:
            yield jobs_family()
        except SQLAlchemyError as exc:
            log.warning("smi_jobs unreadable: %s", type(exc).__name__)
        try:
            yield from queue_families(self.app)
        except RedisError as exc:
            log.warning("queue metrics unreadable, Redis unavailable: %s", type(exc).__name__)


def shared_families(app: Flask) -> list[Metric]:
    """The counters and histograms every process adds to, read in one round trip."""
    pipe = redis_connection(app).pipeline(transaction=False)
    for metric in SHARED:
        pipe.hgetall(metric.key)
    families: list[Metric] = []
    for metric, stored in zip(SHARED, pipe.execute(), strict=True):
        samples: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
        for raw_field, raw_value in stored.items():
            try:
                sample, *values = json.loads(raw_field)
                samples[tuple(values)][sample] = float(raw_value)
            except (ValueError, TypeError):
                continue  # not a field this code wrote
        families.append(_family(metric, samples))
    return families


def _family(metric: Shared, samples: dict[tuple[str, ...], dict[str, float]]) -> Metric:
    if not metric.buckets:
        counter = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
        if not metric.labels and not samples:
            samples = {(): {"total": 0.0}}  # a counter without labels is there from the start
        for values, sample in sorted(samples.items()):
            counter.add_metric(list(values), sample.get("total", 0.0))
        return counter
    histogram = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
    bounds = [floatToGoString(b) for b in (*metric.buckets, math.inf)]
    for values, sample in sorted(samples.items()):
        running, buckets = 0.0, []
        for bound in bounds:
            running += sample.get(f"le:{bound}", 0.0)
            buckets.append((bound, running))
        histogram.add_metric(list(values), buckets, sample.get("sum", 0.0))
    return histogram


def jobs_family() -> GaugeMetricFamily:
    """smi_jobs: the jobs in each status now (every status shown, 0 included)."""
    counted = dict(db.session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    gauge = GaugeMetricFamily("smi_jobs", "Jobs by status", labels=["status"])
    for status in JOB_STATUSES:
        gauge.add_metric([status], float(counted.get(status, 0)))
    return gauge


def queue_families(app: Flask) -> list[Metric]:
    """smi_queue_depth and smi_queue_oldest_seconds: each RQ queue's waiting jobs, and how long
    its oldest has waited (0 when empty)."""
    connection = redis_connection(app)
    depth = GaugeMetricFamily("smi_queue_depth", "Jobs waiting in an RQ queue", labels=["queue"])
    oldest = GaugeMetricFamily(
        "smi_queue_oldest_seconds",
        "How long the oldest waiting RQ job has waited",
        labels=["queue"],
    )
    now = dt.datetime.now(dt.UTC)
    for name in (UPSCALE_QUEUE, DEFAULT_QUEUE, SAMPLES_QUEUE):
        queue = Queue(name, connection=connection)
        depth.add_metric([name], float(queue.count))
        oldest.add_metric([name], _waited(queue, connection, now))
    return [depth, oldest]


def _waited(queue: Queue, connection: Any, now: dt.datetime) -> float:
    """Seconds since the first job still in `queue` was enqueued (0 when it is empty)."""
    first = queue.get_job_ids(0, 1)
    if not first:
        return 0.0
    job = RQJob.fetch_many(first, connection=connection)[0]
    if job is None or job.enqueued_at is None:
        return 0.0
    return max(0.0, (now - job.enqueued_at).total_seconds())
