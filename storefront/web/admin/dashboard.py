"""The dashboard: how the shop is doing over a date range."""

from __future__ import annotations

import datetime as dt

from flask import current_app, render_template, request
from flask.typing import ResponseReturnValue

from storefront.models import utcnow
from storefront.reports.dashboard import DEFAULT_DAYS, DateRange, build_dashboard
from storefront.reports.job_list import EARLIEST_DATE, LATEST_DATE, parse_date
from storefront.web.admin.base import bp

MAX_RANGE_DAYS = 366


def date_range_from_args() -> tuple[DateRange, list[str]]:
    """The range in `?from=&to=` (the last 30 days by default), and what was wrong with it."""
    errors: list[str] = []
    default = DateRange.last_days(DEFAULT_DAYS)
    try:
        start = parse_date(request.args.get("from")) or default.start
        end = parse_date(request.args.get("to")) or default.end
    except ValueError:
        return default, [
            f"Dates look like 2026-01-31, between {EARLIEST_DATE} and {LATEST_DATE}; "
            "showing the last 30 days."
        ]
    if start > end:
        errors.append("The range starts after it ends; the dates were swapped.")
        start, end = end, start
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        errors.append(f"A range is at most {MAX_RANGE_DAYS} days; it was shortened.")
        start = end - dt.timedelta(days=MAX_RANGE_DAYS - 1)
    return DateRange(start, end), errors


@bp.get("/")
def dashboard() -> ResponseReturnValue:
    """Revenue, jobs, the queue, failures, the funnel and the best sellers."""
    date_range, errors = date_range_from_args()
    figures = build_dashboard(current_app._get_current_object(), date_range, utcnow())  # type: ignore[attr-defined]
    return render_template(
        "admin/dashboard.html",
        d=figures,
        errors=errors,
        currency=current_app.config["CURRENCY"],
        presets=[(f"Last {days} days", DateRange.last_days(days)) for days in (7, 30, 90)],
    )
