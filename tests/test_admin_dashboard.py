"""The dashboard's figures against jobs made here: money, states, queue, funnel, sellers."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from storefront import funnel
from storefront.extensions import db
from storefront.jobs.queueing import enqueue_processing
from storefront.models import FunnelEvent, Job, utcnow
from storefront.reports.dashboard import DateRange, build_dashboard, revenue_by_day
from tests import admin_helpers
from tests.admin_helpers import text
from tests.factories import make_attachment, make_job, make_post

admin_user = admin_helpers.admin_user
admin_client = admin_helpers.admin_client


def _at(days_ago: int, hour: int = 12) -> dt.datetime:
    day = utcnow().date() - dt.timedelta(days=days_ago)
    return dt.datetime.combine(day, dt.time(hour))


@pytest.fixture
def shop(app: Flask) -> dict[str, Job]:
    """Sales over a few days: paid, partly and fully refunded, failed, unpaid, and one too old."""
    space = make_post(title="Space")
    cats = make_post(title="Cats")
    rocket = make_attachment(app, space, title="Rocket")
    tabby = make_attachment(app, cats, title="Tabby")

    def job(attachment: object, days_ago: int, **fields: object) -> Job:
        values = {"created_at": _at(days_ago), "amount_cost": Decimal("0.16")} | fields
        return make_job(attachment, **values)  # type: ignore[arg-type]

    jobs = {
        "big": job(
            rocket,
            1,
            status="completed",
            payment_status="paid",
            amount_charged=Decimal("7.68"),
            amount_cost=Decimal("2.56"),
            paid_at=_at(1),
            completed_at=_at(1, 13),
            download_count=2,
        ),
        "small": job(
            rocket,
            1,
            status="completed",
            payment_status="paid",
            amount_charged=Decimal("1.92"),
            refund_amount=Decimal("0.50"),
            paid_at=_at(1),
            completed_at=_at(1, 14),
        ),
        "refunded": job(
            tabby,
            3,
            status="failed",
            payment_status="refunded",
            amount_charged=Decimal("1.92"),
            refund_amount=Decimal("1.92"),
            paid_at=_at(3),
            failed_at=utcnow() - dt.timedelta(hours=2),
        ),
        "waiting": job(
            tabby,
            0,
            status="pending",
            payment_status="paid",
            amount_charged=Decimal("0.50"),
            paid_at=utcnow() - dt.timedelta(hours=1),
        ),
        "unpaid": job(tabby, 0, status="awaiting_payment", amount_charged=Decimal("9.99")),
        "old_failure": job(
            tabby,
            5,
            status="failed",
            payment_status="failed",
            failed_at=utcnow() - dt.timedelta(days=2),
        ),
        "too_old": job(
            rocket,
            45,
            status="completed",
            payment_status="paid",
            amount_charged=Decimal("100.00"),
            completed_at=_at(45),
        ),
    }
    for kind, count in ((funnel.IMAGE_VIEWED, 20), (funnel.CHECKOUT_STARTED, 5), (funnel.PAID, 4)):
        for _ in range(count):
            db.session.add(FunnelEvent(kind=kind, post_id=space.id, created_at=_at(1)))
    db.session.add(FunnelEvent(kind=funnel.IMAGE_VIEWED, created_at=_at(60)))
    db.session.commit()
    return jobs


def test_revenue_query_is_net_of_refunds_by_day(shop: dict[str, Job]) -> None:
    days = revenue_by_day(_at(30, 0), _at(-1, 0))
    by_day = {row.day: row for row in days}
    yesterday = by_day[_at(1).date()]
    assert (yesterday.jobs, yesterday.charged, yesterday.refunded) == (
        2,
        Decimal("9.60"),
        Decimal("0.50"),
    )
    assert yesterday.revenue == Decimal("9.10")
    three_days = by_day[_at(3).date()]
    assert (three_days.jobs, three_days.revenue) == (1, Decimal("0.00"))
    assert by_day[_at(0).date()].revenue == Decimal("0.50")  # the unpaid job is not counted
    assert all(isinstance(row.revenue, Decimal) for row in days)


def test_dashboard_figures_match_the_jobs(app: Flask, shop: dict[str, Job]) -> None:
    enqueue_processing(shop["waiting"].job_id)
    d = build_dashboard(app, DateRange.last_days(30))
    assert d.totals.revenue == Decimal("9.60")  # 7.68 + 1.92 − 0.50 + 1.92 − 1.92 + 0.50
    assert d.totals.refunded == Decimal("2.42")
    assert d.totals.cost == Decimal("3.04")  # 2.56 + 3 × 0.16
    assert d.totals.margin == Decimal("6.56")
    assert d.totals.margin_percent == Decimal("68.3")
    assert (d.totals.paid_jobs, d.totals.completed_jobs) == (4, 2)
    assert d.statuses == {
        "awaiting_payment": 1,
        "pending": 1,
        "processing": 0,
        "completed": 2,
        "failed": 2,
        "abandoned": 0,
    }
    assert d.queue.depth == 1
    assert d.queue.oldest_waiting is not None
    assert d.queue.oldest_waiting.job_id == shop["waiting"].job_id
    assert d.failures.count == 1
    assert [job.job_id for job in d.failures.latest] == [shop["refunded"].job_id]
    steps = {step.label: step for step in d.funnel}
    assert [step.count for step in d.funnel] == [20, 5, 4, 2, 1]
    assert steps["Checkouts started"].from_previous == Decimal("25.0")
    assert steps["Paid"].from_previous == Decimal("80.0")
    assert steps["Downloaded"].from_previous == Decimal("50.0")
    assert steps["Paid"].from_first == Decimal("20.0")
    assert [(s.title, s.revenue) for s in d.top_posts] == [
        ("Space", Decimal("9.10")),
        ("Cats", Decimal("0.50")),
    ]
    assert [(s.title, s.jobs) for s in d.top_images] == [("Rocket", 2), ("Tabby", 2)]
    assert len(d.charts["revenue"].bars) == 30


def test_dashboard_page_shows_the_figures(admin_client: FlaskClient, shop: dict[str, Job]) -> None:
    page = text(admin_client.get("/admin/"))
    assert re.search(r'id="stat-revenue">\$9\.60<', page)
    assert re.search(r'id="stat-margin">\$6\.56 <small>\(68\.3 %\)', page)
    assert re.search(r'id="stat-completed">2<', page)
    assert re.search(r'id="failures-24h">1<', page)
    assert re.search(r'data-status="completed">2<', page)
    assert "<svg" in page and page.count('class="bar"') == 2 * 30
    assert "/admin/jobs?status=failed&amp;from=" in admin_client.get("/admin/").get_data(
        as_text=True
    )
    assert "Space" in page and "Rocket" in page


def test_date_range_narrows_every_figure(admin_client: FlaskClient, shop: dict[str, Job]) -> None:
    old_day = _at(45).date().isoformat()
    page = text(admin_client.get(f"/admin/?from={old_day}&to={old_day}"))
    assert re.search(r'id="stat-revenue">\$100\.00<', page)
    assert re.search(r'id="stat-paid">1<', page)
    assert page.count('class="bar"') == 2 * 1
    swapped = text(admin_client.get(f"/admin/?from={_at(0).date()}&to={old_day}"))
    assert "the dates were swapped" in swapped
    bad = text(admin_client.get("/admin/?from=last-week"))
    assert "Dates look like 2026-01-31" in bad


def test_dashboard_survives_redis_being_down(app: Flask, admin_client: FlaskClient) -> None:
    app.extensions.pop("smi_redis", None)
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    page = text(admin_client.get("/admin/"))
    assert "Redis unavailable" in page


def test_report_revenue_command(runner: FlaskCliRunner, shop: dict[str, Job]) -> None:
    result = runner.invoke(args=["smi", "report", "revenue", "--days", "7"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["day", "jobs", "charged", "tax", "refunded", "revenue"]
    yesterday = next(line for line in lines if line.startswith(_at(1).date().isoformat()))
    assert yesterday.split()[1:] == ["2", "$9.60", "$0.00", "$0.50", "$9.10"]
    assert lines[-1].split() == ["total", "4", "$12.02", "$0.00", "$2.42", "$9.60"]
    older = runner.invoke(args=["smi", "report", "revenue", "--days", "60"])
    assert older.output.splitlines()[-1].split()[-1] == "$109.60"
