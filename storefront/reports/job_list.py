"""Finding jobs for the admin: filters from the query string, pages, CSV, and a job's timeline."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from storefront.extensions import db
from storefront.models import (
    JOB_STATUSES,
    PAYMENT_STATUSES,
    AdminAction,
    DownloadLog,
    Job,
    JobEvent,
    StripeEvent,
)

PER_PAGE = 50
SORTS = {
    "created": Job.created_at,
    "paid": Job.paid_at,
    "completed": Job.completed_at,
    "amount": Job.amount_charged,
    "email": Job.email,
    "status": Job.status,
}
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
STRIPE_ID_PATTERN = re.compile(r"(cs|pi|ch|re|evt)_[A-Za-z0-9_]+")
JOB_ID_PREFIX_PATTERN = re.compile(r"[0-9a-f]{8}(-[0-9a-f-]{0,27})?", re.I)
# A search for part of an email with at most this many matches finds them first, then sorts.
NARROW_SEARCH = 5000


# Dates a filter may name: far enough apart for any shop, near enough to add a day to safely.
EARLIEST_DATE = dt.date(2000, 1, 1)
LATEST_DATE = dt.date(2999, 12, 31)
DATE_HINT = f"a date like 2026-01-31, between {EARLIEST_DATE} and {LATEST_DATE}"
# No list has this many pages; a larger page number is read as this one.
MAX_PAGE = 1_000_000


def parse_date(raw: str | None) -> dt.date | None:
    """A YYYY-MM-DD date from a form, or None; ValueError if it is malformed or out of range."""
    if not raw or not raw.strip():
        return None
    if len(raw) > 40:
        raise ValueError("too long for a date")
    day = dt.date.fromisoformat(raw.strip())
    if not EARLIEST_DATE <= day <= LATEST_DATE:
        raise ValueError(f"{day} is not between {EARLIEST_DATE} and {LATEST_DATE}")
    return day


def parse_page(raw: str | None) -> int:
    """A page number from the query string: 1 when missing or malformed, at most MAX_PAGE."""
    text = (raw or "").strip()
    if not text.isdigit() or not text.isascii():
        return 1
    # Compare as text first: int() of a very long string of digits is slow, and refused.
    return min(MAX_PAGE, max(1, int(text))) if len(text) <= 9 else MAX_PAGE


@dataclass(frozen=True)
class JobFilters:
    """The job list's filters, sort and page, as they travel in the query string."""

    status: str = ""
    payment_status: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    q: str = ""
    sort: str = "created"
    order: str = "desc"
    page: int = 1
    errors: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> JobFilters:
        """Read the filters; anything malformed is dropped with a message in `errors`."""
        errors: list[str] = []
        status = args.get("status", "")
        if status and status not in JOB_STATUSES:
            errors.append(f"Unknown status {status!r}.")
            status = ""
        payment = args.get("payment_status", "")
        if payment and payment not in PAYMENT_STATUSES:
            errors.append(f"Unknown payment status {payment!r}.")
            payment = ""
        dates: dict[str, dt.date | None] = {}
        for name, label in (("from", "From"), ("to", "To")):
            try:
                dates[name] = parse_date(args.get(name))
            except ValueError:
                errors.append(f"{label} must be {DATE_HINT}.")
                dates[name] = None
        sort = args.get("sort", "created")
        if sort not in SORTS:
            sort = "created"
        order = "asc" if args.get("order") == "asc" else "desc"
        page = parse_page(args.get("page"))
        return cls(
            status,
            payment,
            dates["from"],
            dates["to"],
            args.get("q", "").strip()[:255],
            sort,
            order,
            page,
            tuple(errors),
        )

    def query_args(self, **changes: Any) -> dict[str, str]:
        """The filters as query-string arguments (empty ones left out), with `changes` applied."""
        target = replace(self, **changes) if changes else self
        args = {
            "status": target.status,
            "payment_status": target.payment_status,
            "from": target.date_from.isoformat() if target.date_from else "",
            "to": target.date_to.isoformat() if target.date_to else "",
            "q": target.q,
            "sort": target.sort if target.sort != "created" else "",
            "order": target.order if target.order != "desc" else "",
            "page": str(target.page) if target.page != 1 else "",
        }
        return {key: value for key, value in args.items() if value}

    @property
    def active(self) -> bool:
        """Whether any filter narrows the list."""
        return bool(self.status or self.payment_status or self.date_from or self.date_to or self.q)


def _is_partial(q: str) -> bool:
    """Whether a search is for part of an email (a scan) rather than an id or a whole address."""
    return not (
        UUID_PATTERN.fullmatch(q)
        or STRIPE_ID_PATTERN.fullmatch(q)
        or JOB_ID_PREFIX_PATTERN.fullmatch(q)
        or ("@" in q and " " not in q)
    )


def _search(q: str) -> Any:
    """Ids and whole addresses are looked up in their indexes; anything else is part of an email."""
    if UUID_PATTERN.fullmatch(q):
        return Job.job_id == q.lower()
    if STRIPE_ID_PATTERN.fullmatch(q):
        return or_(Job.stripe_payment_intent_id == q, Job.stripe_checkout_session_id == q)
    if JOB_ID_PREFIX_PATTERN.fullmatch(q):
        # The first characters of a job id, as the list shows them: a range of the unique index.
        return and_(Job.job_id >= q.lower(), Job.job_id < q.lower() + "~")
    if "@" in q and " " not in q:
        # As typed or in lower case: both use the email index.
        return Job.email.in_(sorted({q, q.lower()}))
    pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    if db.engine.dialect.name == "sqlite":
        # SQLite's LIKE ignores case already, and can then read the email index alone.
        return Job.email.like(pattern, escape="\\")
    return func.lower(Job.email).like(pattern.lower(), escape="\\")


def filtered(filters: JobFilters, *, search_first: bool = False) -> Select[Any]:
    """The jobs matching the filters, in the chosen order.

    `search_first` finds the search's matches on their own first: quicker when they are few.
    """
    query = select(Job)
    if filters.status:
        query = query.where(Job.status == filters.status)
    if filters.payment_status:
        query = query.where(Job.payment_status == filters.payment_status)
    if filters.date_from:
        query = query.where(Job.created_at >= _start_of(filters.date_from))
    if filters.date_to:
        query = query.where(Job.created_at < _start_of(filters.date_to + dt.timedelta(days=1)))
    if filters.q:
        condition = _search(filters.q)
        if search_first:
            condition = Job.id.in_(select(Job.id).where(condition).scalar_subquery())
        query = query.where(condition)
    columns: list[Any] = [SORTS[filters.sort]]
    if filters.sort == "status":
        # The order of the (status, created_at, …) index, so no sort is needed.
        columns.append(Job.created_at)
    columns.append(Job.id)
    if filters.order == "asc":
        return query.order_by(*(column.asc() for column in columns))
    return query.order_by(*(column.desc() for column in columns))


def _start_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


@dataclass
class JobPage:
    """One page of the job list."""

    jobs: list[Job]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        """How many pages the filtered list has."""
        return max(1, math.ceil(self.total / self.per_page))


def job_page(filters: JobFilters, per_page: int = PER_PAGE) -> JobPage:
    """The page of filtered jobs the filters ask for, and how many match in all."""
    ids_query = filtered(filters).with_only_columns(Job.id)
    # COUNT(*) rather than of a column: PostgreSQL can then answer from an index alone.
    counting = filtered(filters).order_by(None)
    total = int(
        db.session.scalar(counting.with_only_columns(func.count(), maintain_column_froms=True)) or 0
    )
    # SQLite would walk the date index row by row to find a few matches; PostgreSQL plans it well.
    sqlite = db.engine.dialect.name == "sqlite"
    if sqlite and filters.q and _is_partial(filters.q) and total <= NARROW_SEARCH:
        ids_query = filtered(filters, search_first=True).with_only_columns(Job.id)
    page = min(filters.page, max(1, math.ceil(total / per_page)))
    # Ids first (often from an index alone), then the page's 50 rows: sorting whole rows of a
    # large table is what makes a list slow.
    ids = list(db.session.scalars(ids_query.limit(per_page).offset((page - 1) * per_page)))
    found = {job.id: job for job in db.session.scalars(select(Job).where(Job.id.in_(ids)))}
    return JobPage([found[i] for i in ids if i in found], total, page, per_page)


CSV_COLUMNS = [column.name for column in Job.__table__.columns]


# A cell starting with one of these is run as a formula by Excel, LibreOffice or Google Sheets.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
GENUINE_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def csv_value(value: Any) -> str:
    """How one value is written in a CSV export: ISO times, exact decimals, empty for NULL, and
    text a spreadsheet would run as a formula made plain text with a leading `'`.

    Genuine numbers, negative ones too, stay numbers.
    """
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    text = str(value)
    if text.startswith(FORMULA_STARTS) and not GENUINE_NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_rows(filters: JobFilters, batch: int = 1000) -> Iterator[str]:
    """The filtered list as CSV text, streamed in batches: a header, then one line per job."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    query = filtered(filters).with_only_columns(*Job.__table__.columns)
    for chunk in db.session.execute(query.execution_options(yield_per=batch)).partitions():
        for row in chunk:
            writer.writerow([csv_value(value) for value in row])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


@dataclass(frozen=True)
class TimelineEntry:
    """A line of a job's timeline."""

    at: dt.datetime
    kind: str
    message: str
    actor: str = ""
    source: str = "job"


TIMESTAMPS = (
    ("created_at", "Created"),
    ("paid_at", "Paid"),
    ("processing_started_at", "Processing started"),
    ("completed_at", "Completed"),
    ("failed_at", "Failed"),
    ("refunded_at", "Refunded"),
    ("disputed_at", "Disputed"),
    ("download_expires_at", "Download link expires"),
)


def timeline(job: Job) -> list[TimelineEntry]:
    """Every dated thing about a job, oldest first: timestamps, events, Stripe events, downloads."""
    entries = [
        TimelineEntry(getattr(job, column), "timestamp", label, source="column")
        for column, label in TIMESTAMPS
        if getattr(job, column) is not None
    ]
    for event in db.session.scalars(select(JobEvent).where(JobEvent.job_id == job.job_id)):
        entries.append(
            TimelineEntry(event.created_at, event.kind, event.message, event.actor, "event")
        )
    for stripe_event in db.session.scalars(
        select(StripeEvent).where(StripeEvent.job_id == job.job_id)
    ):
        entries.append(
            TimelineEntry(
                stripe_event.received_at,
                stripe_event.type,
                stripe_event.event_id,
                "stripe",
                "stripe",
            )
        )
    for download in db.session.scalars(
        select(DownloadLog).where(DownloadLog.job_id == job.job_id).limit(500)
    ):
        note = f"{download.ip or 'unknown address'}, {download.bytes_sent} bytes"
        if download.range_header:
            note += f", range {download.range_header}"
        if download.counted:
            note += ", counted"
        entries.append(TimelineEntry(download.created_at, "download", note, "buyer", "download"))
    return sorted(entries, key=lambda entry: (entry.at, entry.source != "column"))


def admin_actions_for(target: str, limit: int = 50) -> list[AdminAction]:
    """The audit log's latest rows about one target."""
    return list(
        db.session.scalars(
            select(AdminAction)
            .where(AdminAction.target == target)
            .order_by(AdminAction.id.desc())
            .limit(limit)
        )
    )
