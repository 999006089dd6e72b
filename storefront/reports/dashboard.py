"""The dashboard's figures: revenue (the seed's query, net of tax and refunds), cost and margin,
jobs by status, the upscale queue, recent failures, the funnel, and the best-selling posts and
images.

Revenue is what buyers paid (amount_charged, after any discount), less the tax in it, less
refunds. A refund of a taxed order returns tax and price in the proportion they were charged:
the tax kept is amount_tax × (charged − refunded) / charged, so a full refund keeps no tax.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from flask import Flask, current_app
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from sqlalchemy import case, func, select

from storefront import funnel
from storefront.extensions import db
from storefront.formatting import format_money
from storefront.models import JOB_STATUSES, Attachment, FunnelEvent, Job, Post, utcnow
from storefront.queues import UPSCALE_QUEUE, get_queue, redis_connection

log = logging.getLogger("smi.admin")

ZERO = Decimal("0.00")
REVENUE_STATUSES = ("paid", "refunded")
DEFAULT_DAYS = 30


def _money(value: Any) -> Decimal:
    """A sum from the database as an exact amount in cents (SQLite sums in floating point)."""
    if value is None:
        return ZERO
    return Decimal(str(value)).quantize(Decimal("0.01"))


def _tax_kept() -> Any:
    """The tax left in a job's payment after its refunds (refunds return tax pro rata)."""
    charged = func.coalesce(Job.amount_charged, 0)
    # × 1.0 first: SQLite stores whole amounts as integers and would divide them as integers.
    kept = func.coalesce(Job.amount_tax, 0) * 1.0 * (charged - func.coalesce(Job.refund_amount, 0))
    return case((charged > 0, kept / charged), else_=0)


def _net_revenue() -> Any:
    """A job's revenue: what was charged, less refunds, less the tax kept."""
    return func.coalesce(Job.amount_charged, 0) - func.coalesce(Job.refund_amount, 0) - _tax_kept()


def _day(value: Any) -> dt.date:
    """DATE() comes back as text from SQLite and as a date from PostgreSQL."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


@dataclass(frozen=True)
class DateRange:
    """Whole days, both ends included."""

    start: dt.date
    end: dt.date

    @classmethod
    def last_days(cls, days: int, today: dt.date | None = None) -> DateRange:
        """The last `days` days up to and including today (UTC)."""
        today = today or utcnow().date()
        return cls(today - dt.timedelta(days=days - 1), today)

    @property
    def since(self) -> dt.datetime:
        """The first instant of the range."""
        return dt.datetime.combine(self.start, dt.time())

    @property
    def until(self) -> dt.datetime:
        """The first instant after the range."""
        return dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time())

    @property
    def days(self) -> list[dt.date]:
        """Every day of the range."""
        count = (self.end - self.start).days + 1
        return [self.start + dt.timedelta(days=offset) for offset in range(count)]


@dataclass(frozen=True)
class DayRevenue:
    """One row of the seed's revenue query: a day, its paid jobs, and its money."""

    day: dt.date
    jobs: int
    charged: Decimal
    refunded: Decimal
    cost: Decimal
    tax: Decimal = ZERO  # the tax in what was charged and not refunded

    @property
    def revenue(self) -> Decimal:
        """What was charged, net of tax and refunds."""
        return self.charged - self.refunded - self.tax


def revenue_by_day(since: dt.datetime, until: dt.datetime) -> list[DayRevenue]:
    """The seed's revenue query: SUM(amount_charged) − SUM(refund_amount), less the tax kept, over
    paid and refunded jobs, grouped by the day they were created, with counts. Days without sales
    are left out.
    """
    day = func.date(Job.created_at)
    rows = db.session.execute(
        select(
            day.label("day"),
            func.count(),
            func.sum(Job.amount_charged),
            func.sum(func.coalesce(Job.refund_amount, 0)),
            func.sum(func.coalesce(Job.amount_cost, 0)),
            func.sum(_tax_kept()),
        )
        .where(
            Job.payment_status.in_(REVENUE_STATUSES),
            Job.created_at >= since,
            Job.created_at < until,
        )
        .group_by(day)
        .order_by(day)
    ).all()
    return [
        DayRevenue(_day(d), int(n), _money(charged), _money(refunded), _money(cost), _money(tax))
        for d, n, charged, refunded, cost, tax in rows
    ]


@dataclass
class Totals:
    """Money and counts of the range."""

    paid_jobs: int = 0
    charged: Decimal = ZERO
    refunded: Decimal = ZERO
    cost: Decimal = ZERO
    completed_jobs: int = 0
    tax: Decimal = ZERO

    @property
    def revenue(self) -> Decimal:
        """Charged, net of tax and refunds."""
        return self.charged - self.refunded - self.tax

    @property
    def margin(self) -> Decimal:
        """Revenue less the provider's cost."""
        return self.revenue - self.cost

    @property
    def margin_percent(self) -> Decimal | None:
        """The margin as a share of revenue, or None without revenue."""
        if self.revenue <= 0:
            return None
        return (self.margin * 100 / self.revenue).quantize(Decimal("0.1"))


@dataclass(frozen=True)
class FunnelStep:
    """A step of the funnel, its count, and its conversion from the step before and from views."""

    label: str
    count: int
    from_previous: Decimal | None
    from_first: Decimal | None


def _rate(part: int, whole: int) -> Decimal | None:
    if whole <= 0:
        return None
    return (Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.1"))


def _buffered_views(since: dt.datetime, until: dt.datetime) -> int:
    """Image views still in Redis, not yet folded into the table by the sweeper."""
    try:
        return funnel.buffered_views(
            redis_connection(current_app._get_current_object()),  # type: ignore[attr-defined]
            since,
            until,
        )
    except RedisError as exc:
        log.warning("the funnel leaves out the image views buffered in Redis: %s", exc)
        return 0


def funnel_steps(since: dt.datetime, until: dt.datetime) -> list[FunnelStep]:
    """Image views → checkouts started → paid (funnel events) → completed → downloaded (jobs)."""

    def events(kind: str) -> int:
        return int(
            db.session.scalar(
                select(func.count())
                .select_from(FunnelEvent)
                .where(
                    FunnelEvent.kind == kind,
                    FunnelEvent.created_at >= since,
                    FunnelEvent.created_at < until,
                )
            )
            or 0
        )

    completed = (
        select(func.count())
        .select_from(Job)
        .where(Job.completed_at >= since, Job.completed_at < until)
    )
    counts = [
        ("Image views", events(funnel.IMAGE_VIEWED) + _buffered_views(since, until)),
        ("Checkouts started", events(funnel.CHECKOUT_STARTED)),
        ("Paid", events(funnel.PAID)),
        ("Completed", int(db.session.scalar(completed) or 0)),
        (
            "Downloaded",
            int(db.session.scalar(completed.where(Job.download_count > 0)) or 0),
        ),
    ]
    first = counts[0][1]
    steps = []
    for index, (label, count) in enumerate(counts):
        previous = counts[index - 1][1] if index else None
        steps.append(
            FunnelStep(
                label,
                count,
                _rate(count, previous) if previous is not None else None,
                _rate(count, first) if index else None,
            )
        )
    return steps


@dataclass(frozen=True)
class TopSeller:
    """A post or image and what it brought in."""

    id: int
    title: str
    jobs: int
    revenue: Decimal


def top_sellers(
    since: dt.datetime, until: dt.datetime, limit: int = 5
) -> tuple[list[TopSeller], list[TopSeller]]:
    """The posts and the images that brought in most in the range, from one pass over the jobs."""
    revenue = func.sum(_net_revenue())
    rows = db.session.execute(
        select(Job.post_id, Job.attachment_id, func.count(), revenue)
        .where(
            Job.payment_status.in_(REVENUE_STATUSES),
            Job.created_at >= since,
            Job.created_at < until,
        )
        .group_by(Job.post_id, Job.attachment_id)
    ).all()
    posts: dict[int, list[Any]] = {}
    images: dict[int, list[Any]] = {}
    for post_id, attachment_id, count, money in rows:
        for key, totals in ((post_id, posts), (attachment_id, images)):
            if key is not None:
                entry = totals.setdefault(int(key), [0, ZERO])
                entry[0] += int(count)
                entry[1] += _money(money)

    def best(totals: dict[int, list[Any]]) -> list[tuple[int, int, Decimal]]:
        ranked = sorted(totals.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))
        return [(key, jobs, money) for key, (jobs, money) in ranked[:limit]]

    top_posts, top_images = best(posts), best(images)
    post_titles = dict(
        db.session.execute(
            select(Post.id, Post.title).where(Post.id.in_([key for key, *_ in top_posts]))
        ).all()
    )
    image_titles = {
        row[0]: row[1] or row[2]
        for row in db.session.execute(
            select(Attachment.id, Attachment.title, Attachment.original_filename).where(
                Attachment.id.in_([key for key, *_ in top_images])
            )
        )
    }
    return (
        [TopSeller(k, str(post_titles.get(k, f"#{k} (removed)")), n, m) for k, n, m in top_posts],
        [TopSeller(k, str(image_titles.get(k, f"#{k} (removed)")), n, m) for k, n, m in top_images],
    )


@dataclass
class QueueState:
    """The upscale queue as RQ sees it, and the oldest paid job the database says is waiting."""

    depth: int | None
    oldest_enqueued_at: dt.datetime | None
    oldest_waiting: Job | None
    error: str = ""


def queue_state(app: Flask) -> QueueState:
    """How many upscales wait, and since when; Redis being down is shown, not raised."""
    oldest_waiting = db.session.scalar(
        select(Job)
        .where(Job.status == "pending", Job.payment_status == "paid")
        .order_by(Job.paid_at.asc())
        .limit(1)
    )
    try:
        queue = get_queue(app, UPSCALE_QUEUE)
        depth = queue.count
        oldest_at = None
        ids = queue.get_job_ids(0, 0)
        if ids:
            first = RQJob.fetch(ids[0], connection=queue.connection)
            oldest_at = first.enqueued_at.replace(tzinfo=None) if first.enqueued_at else None
    except (RedisError, NoSuchJobError) as exc:
        log.warning("upscale queue unavailable: %s", type(exc).__name__)
        return QueueState(None, None, oldest_waiting, f"Redis unavailable ({type(exc).__name__})")
    return QueueState(depth, oldest_at, oldest_waiting)


@dataclass
class Failures:
    """Jobs that failed in the last 24 hours."""

    count: int
    latest: list[Job]


def recent_failures(now: dt.datetime, limit: int = 10) -> Failures:
    """How many jobs failed in the 24 hours before `now`, and the latest of them."""
    since = now - dt.timedelta(hours=24)
    condition = (Job.failed_at >= since, Job.failed_at <= now)
    count = db.session.scalar(select(func.count()).select_from(Job).where(*condition)) or 0
    latest = db.session.scalars(
        select(Job).where(*condition).order_by(Job.failed_at.desc()).limit(limit)
    ).all()
    return Failures(int(count), list(latest))


def jobs_by_status(since: dt.datetime, until: dt.datetime) -> dict[str, int]:
    """How many of the jobs created in the range are in each state."""
    counts = dict.fromkeys(JOB_STATUSES, 0)
    for status, count in db.session.execute(
        select(Job.status, func.count())
        # Naming every status lets the (status, created_at) index answer alone.
        .where(Job.status.in_(JOB_STATUSES), Job.created_at >= since, Job.created_at < until)
        .group_by(Job.status)
    ):
        counts[str(status)] = int(count)
    return counts


@dataclass(frozen=True)
class Bar:
    """One bar of a chart, in the SVG's units."""

    x: float
    y: float
    width: float
    height: float
    label: str
    value: str


@dataclass
class BarChart:
    """A small bar chart drawn on the server as SVG."""

    bars: list[Bar]
    width: int
    height: int
    maximum: str
    title: str
    first_label: str = ""
    last_label: str = ""


def bar_chart(
    points: Sequence[tuple[str, Decimal | int]],
    *,
    title: str,
    fmt: Callable[[Any], str] = str,
    width: int = 720,
    height: int = 160,
) -> BarChart:
    """Bars for `points` (label, value), scaled to the largest; negative values draw as zero."""
    top = max((max(Decimal(v), Decimal(0)) for _, v in points), default=Decimal(0))
    slot = width / max(len(points), 1)
    gap = min(2.0, slot * 0.2)
    bars = []
    for index, (label, value) in enumerate(points):
        share = float(max(Decimal(value), Decimal(0)) / top) if top > 0 else 0.0
        bar_height = round(share * (height - 4), 2)
        bars.append(
            Bar(
                round(index * slot + gap / 2, 2),
                round(height - bar_height, 2),
                round(slot - gap, 2),
                bar_height,
                label,
                fmt(value),
            )
        )
    return BarChart(
        bars,
        width,
        height,
        fmt(top),
        title,
        points[0][0] if points else "",
        points[-1][0] if points else "",
    )


@dataclass
class Dashboard:
    """Everything the dashboard shows for one date range."""

    range: DateRange
    totals: Totals
    days: list[DayRevenue]
    statuses: dict[str, int]
    queue: QueueState
    failures: Failures
    funnel: list[FunnelStep]
    top_posts: list[TopSeller]
    top_images: list[TopSeller]
    charts: dict[str, BarChart] = field(default_factory=dict)


def build_dashboard(app: Flask, date_range: DateRange, now: dt.datetime | None = None) -> Dashboard:
    """Compute every figure of the dashboard for `date_range`."""
    now = now or utcnow()
    since, until = date_range.since, date_range.until
    days = revenue_by_day(since, until)
    steps = funnel_steps(since, until)
    totals = Totals(
        paid_jobs=sum(d.jobs for d in days),
        charged=sum((d.charged for d in days), ZERO),
        refunded=sum((d.refunded for d in days), ZERO),
        cost=sum((d.cost for d in days), ZERO),
        tax=sum((d.tax for d in days), ZERO),
        completed_jobs=next(step.count for step in steps if step.label == "Completed"),
    )
    by_day: Mapping[dt.date, DayRevenue] = {d.day: d for d in days}
    currency = str(app.config["CURRENCY"])
    revenue_points = [
        (f"{day:%b %d}", by_day[day].revenue if day in by_day else ZERO) for day in date_range.days
    ]
    count_points = [
        (f"{day:%b %d}", by_day[day].jobs if day in by_day else 0) for day in date_range.days
    ]
    dashboard = Dashboard(
        date_range,
        totals,
        days,
        jobs_by_status(since, until),
        queue_state(app),
        recent_failures(now),
        steps,
        *top_sellers(since, until),
    )
    dashboard.charts["revenue"] = bar_chart(
        revenue_points,
        title="Revenue per day, net of refunds",
        fmt=lambda value: format_money(Decimal(value), currency),
    )
    dashboard.charts["jobs"] = bar_chart(count_points, title="Paid jobs per day")
    return dashboard


def revenue_report(days: int, now: dt.datetime | None = None) -> list[DayRevenue]:
    """The seed's revenue query over the last `days` days (today included)."""
    if days < 1:
        raise ValueError("the report needs at least 1 day")
    today = (now or utcnow()).date()
    since = dt.datetime.combine(today - dt.timedelta(days=days - 1), dt.time())
    until = dt.datetime.combine(today + dt.timedelta(days=1), dt.time())
    return revenue_by_day(since, until)
