"""Every public route under random paths, query strings, form bodies, headers and Range values:
never a 500, and nothing paid, delivered or counted without a valid payment or a valid link."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

import pytest
from flask import Flask
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from devservers.stripe_local import LocalStripe
from storefront.catalog.library import MAX_ID, PREVIEW_SIZES
from storefront.extensions import db
from storefront.jobs.delivery import token_digest
from storefront.models import DownloadLog, EmailOutbox, Job, StripeEvent
from tests.admin_helpers import completed_job
from tests.factories import make_attachment, make_job, make_post

pytestmark = pytest.mark.slow  # about 12 s for both

TOKEN = "0123456789abcdef" * 4  # the one working download link
CONTENT = bytes(range(256)) * 4 + b"tail"
MAX_COUNT = 1000
BUYER = "buyer@example.com"
FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Money and delivery columns of a job: none may change without a payment or a valid link.
WATCHED = (
    "status",
    "payment_status",
    "paid_at",
    "refunded_at",
    "refund_amount",
    "stripe_payment_intent_id",
    "email_sent",
    "upscaled_file_path",
    "download_token",
    "download_count",
    "download_bytes",
    "download_expires_at",
)
# What a fresh link (asked for with the order's number and email) starts anew.
RENEWED = {"download_token", "download_count", "download_bytes", "download_expires_at"}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Links that take many downloads, so the Range fuzz keeps being served; rate limits (tested
    in test_rate_limits.py) high enough that the fuzz reaches what is behind them."""
    return {
        **app_config,
        "DOWNLOAD_MAX_COUNT": MAX_COUNT,
        "CHECKOUT_RATE_LIMIT": "100000/minute",
        "RESEND_PER_HOUR": 1000,
        "MY_ORDERS_PER_HOUR": 1000,
    }


@dataclass(frozen=True)
class Shop:
    """What the fuzzer may aim at: real ids, slugs, sessions and emails (never the link token)."""

    attachment_ids: list[int]
    slugs: list[str]
    job_ids: list[str]
    session_ids: list[str]
    completed_job_id: str


@pytest.fixture
def shop(app: Flask, stripe_local: LocalStripe) -> Shop:
    """A catalog, a completed order with a working link, a paid one in the queue, one awaiting
    payment at a real open Checkout Session, and a failed and refunded one."""
    post = make_post(slug="harbour")
    image = make_attachment(app, post, width=120, height=90)
    done = completed_job(app, image, content=CONTENT, download_token=token_digest(TOKEN))
    queued = make_job(
        image, status="pending", payment_status="paid", stripe_payment_intent_id="pi_q"
    )
    refunded = make_job(
        image,
        status="failed",
        payment_status="refunded",
        refund_amount=Decimal("0.50"),
        refunded_at=dt.datetime(2026, 1, 1),
    )
    db.session.commit()
    buy = {"attachment_id": str(image.id), "resolution": "4x", "email": "other@example.com"}
    assert app.test_client().post("/checkout", data=buy).status_code == 303
    awaiting = db.session.scalars(select(Job).where(Job.status == "awaiting_payment")).one()
    assert awaiting.stripe_checkout_session_id is not None
    return Shop(
        attachment_ids=[image.id],
        slugs=[post.slug],
        job_ids=[done.job_id, queued.job_id, awaiting.job_id, refunded.job_id],
        session_ids=[awaiting.stripe_checkout_session_id],
        completed_job_id=done.job_id,
    )


# ---------------------------------------------------------------------------- strategies

SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # not valid UTF-8 on their own
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=SURROGATES), max_size=24)
HEADER_VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
HEADER_NAME = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
# Offsets around the file's size (1028 bytes) more often than far past it.
SMALL = st.integers(min_value=0, max_value=1100)
NUMBER = st.one_of(SMALL, SMALL, SMALL, st.integers(min_value=0, max_value=2**80))
METHODS = st.sampled_from(["GET", "GET", "POST", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"])
FIXED_PATHS = [
    "/",
    "/checkout",
    "/healthz",
    "/readyz",
    "/download/resend",
    "/webhooks/stripe",
    "/admin/",
    "/admin/login",
    "/admin/jobs",
    "/admin/jobs.csv",
    "/admin/settings",
    "/static/style.css",
    "/my-orders",
    "/my-orders/sign-out",
    "/my-orders/fresh-link",
    "/sitemap.xml",
    "/robots.txt",
]
SAMPLE_NAMES = ["4x", "8x", "4x-plain", "8x-plain", "16x", "4x-fancy", "-plain", ""]


def _single_range() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds("{}-{}".format, NUMBER, NUMBER),
        st.builds("{}-".format, NUMBER),
        st.builds("-{}".format, NUMBER),
    )


RANGE = st.one_of(
    st.builds("bytes={}".format, _single_range()),
    st.builds("bytes={}-{}".format, SMALL, SMALL),
    st.lists(_single_range(), min_size=2, max_size=4).map(lambda parts: "bytes=" + ",".join(parts)),
    st.builds(
        "{}={}".format, st.sampled_from(["bytes", "Bytes", "items", "", " bytes"]), HEADER_VALUE
    ),
    HEADER_VALUE,
)


def _segment(known: list[Any] | None = None) -> st.SearchStrategy[str]:
    """A path segment: a known value or any text, quoted as a browser would."""
    text = st.sampled_from([str(k) for k in known]) | TEXT if known else TEXT
    return text.map(lambda s: quote(s, safe=""))


def _paths(shop: Shop) -> st.SearchStrategy[str]:
    image = st.sampled_from(shop.attachment_ids) | st.integers(min_value=-3, max_value=MAX_ID + 3)
    job = _segment(shop.job_ids)
    token = st.from_regex(r"\A[0-9a-f]{64}\Z").filter(lambda t: t != TOKEN) | _segment()
    return st.one_of(
        st.sampled_from(FIXED_PATHS),
        st.sampled_from(["/checkout", "/download/resend", "/webhooks/stripe"]),
        st.builds("/images/{}".format, image),
        st.builds("/images/{}/preview/{}.jpg".format, image, _segment(list(PREVIEW_SIZES))),
        st.builds("/images/{}/samples/{}.jpg".format, image, _segment(SAMPLE_NAMES)),
        st.builds("/my-orders/{}".format, token),
        st.builds("/posts/{}".format, _segment(shop.slugs)),
        st.builds("/orders/{}{}".format, job, st.sampled_from(["", "/status"])),
        st.builds("/download/{}{}".format, token, st.sampled_from(["", "/file"])),
        st.builds("/originals/{}".format, _segment()),
        st.builds("/webhooks/upsampler/{}/{}".format, job, _segment()),
        st.builds("/admin/jobs/{}".format, job),
        st.lists(_segment(), max_size=4).map(lambda parts: "/" + "/".join(parts)),
    )


def _forms(shop: Shop) -> st.SearchStrategy[dict[str, str]]:
    """Form fields the routes read, with real values often enough to pass validation."""
    values = {
        "attachment_id": st.sampled_from([str(i) for i in shop.attachment_ids]) | TEXT,
        "resolution": st.sampled_from(["4x", "8x", "16x", ""]) | TEXT,
        "email": st.sampled_from([BUYER, "BUYER@example.com ", "x@example.com", "not-an-email"])
        | TEXT,
        "job_id": st.sampled_from(shop.job_ids) | TEXT,
        "csrf_token": TEXT,
    }
    return st.fixed_dictionaries({}, optional=values) | st.dictionaries(TEXT, TEXT, max_size=4)


@dataclass(frozen=True)
class Request:
    """One request the fuzzer makes."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str] | None
    raw: bytes | None
    headers: dict[str, str]


def _requests(shop: Shop) -> st.SearchStrategy[Request]:
    query = st.dictionaries(TEXT, TEXT, max_size=3) | st.fixed_dictionaries(
        {"session_id": st.sampled_from(shop.session_ids) | TEXT}
    )
    signature = st.builds(
        "t={},v1={}".format, st.integers(0, 2**34), st.from_regex(r"\A[0-9a-f]{64}\Z")
    )
    headers = st.dictionaries(
        st.sampled_from(
            ["Range", "If-Range", "Stripe-Signature", "Content-Type", "Cookie", "Accept"]
            + ["User-Agent", "X-Forwarded-For", "Referer", "Authorization", "Origin"]
        )
        | HEADER_NAME.filter(lambda n: n.lower() not in ("content-length", "transfer-encoding")),
        HEADER_VALUE,
        max_size=4,
    ).flatmap(
        lambda h: st.one_of(
            st.just(h),
            RANGE.map(lambda r: {**h, "Range": r}),  # a Range often, and a well-formed one
            signature.map(lambda sig: {**h, "Stripe-Signature": sig}),  # well-formed, wrong
        )
    )

    def aimed(
        method: str, paths: st.SearchStrategy[str], forms: st.SearchStrategy[Any] | None = None
    ) -> st.SearchStrategy[Request]:
        return st.builds(
            Request,
            method=st.just(method),
            path=paths,
            query=query,
            form=st.one_of(_forms(shop), _forms(shop), st.none()) if forms is None else forms,
            raw=st.none() | st.binary(max_size=300),
            headers=headers,
        )

    extras = st.dictionaries(TEXT, TEXT, max_size=2)
    good_checkout = st.builds(
        lambda image, resolution, email, more: {
            **more,
            "attachment_id": str(image),
            "resolution": resolution,
            "email": email,
        },
        st.sampled_from(shop.attachment_ids),
        st.sampled_from(["4x", "8x"]),
        st.sampled_from(["", "new@example.com", "BUYER@example.com"]),
        extras,
    )
    good_resend = st.builds(
        lambda email, more: {**more, "job_id": shop.completed_job_id, "email": email},
        st.sampled_from([BUYER, " Buyer@Example.com ", "other@example.com"]),
        extras,
    )

    # Anything at all, and as often each request that could pay, deliver or count something.
    job, tail = _segment(shop.job_ids), st.sampled_from(["", "/status"])
    return st.one_of(
        METHODS.flatmap(lambda method: aimed(method, _paths(shop))),
        aimed("POST", st.just("/checkout")),
        aimed("POST", st.just("/checkout"), good_checkout),
        aimed("POST", st.just("/download/resend")),
        aimed("POST", st.just("/download/resend"), good_resend),
        aimed("POST", st.sampled_from(["/my-orders", "/my-orders/fresh-link"])),
        aimed("POST", st.just("/my-orders"), good_resend),
        aimed("POST", st.just("/webhooks/stripe")),
        aimed("POST", st.builds("/webhooks/upsampler/{}/{}".format, job, _segment())),
        aimed("GET", st.builds("/orders/{}{}".format, job, tail)),
        aimed("GET", st.builds("/download/{}/file".format, _segment())),
    )


# ---------------------------------------------------------------------------- state


@dataclass(frozen=True)
class State:
    """What money buys, as the database has it."""

    jobs: dict[str, tuple[Any, ...]]
    stripe_events: int
    downloads: int
    downloads_counted: int
    bytes_logged: int
    emails: list[tuple[str, str]]


def _state() -> State:
    db.session.expire_all()
    jobs = {
        job.job_id: tuple(getattr(job, column) for column in WATCHED)
        for job in db.session.scalars(select(Job))
    }
    return State(
        jobs=jobs,
        stripe_events=db.session.scalar(select(func.count(StripeEvent.id))) or 0,
        downloads=db.session.scalar(select(func.count(DownloadLog.id))) or 0,
        downloads_counted=db.session.scalar(
            select(func.count(DownloadLog.id)).where(DownloadLog.counted.is_(True))
        )
        or 0,
        bytes_logged=db.session.scalar(select(func.sum(DownloadLog.bytes_sent))) or 0,
        emails=[
            (row.kind, row.job_id)
            for row in db.session.scalars(select(EmailOutbox).order_by(EmailOutbox.id))
        ],
    )


def _send(app: Flask, request: Request) -> Any:
    client = app.test_client()
    options: dict[str, Any] = {"query_string": request.query, "headers": request.headers}
    if request.form is not None:
        options["data"] = request.form
    elif request.raw is not None:
        options["data"] = request.raw
    return client.open(request.path, method=request.method, buffered=True, **options)


def _asked_for_a_fresh_link(request: Request, answer: Any, shop: Shop) -> bool:
    """The order's own number and email, posted to the resend form: a paid order's right."""
    form = request.form or {}
    return (
        request.method == "POST"
        and request.path == "/download/resend"
        and answer.status_code == 200
        and form.get("job_id", "").strip() == shop.completed_job_id
        and form.get("email", "").strip().lower() == BUYER
    )


def _asked_to_sign_in(request: Request, answer: Any) -> bool:
    """An address posted to "My orders": a sign-in email is written (the worker decides whether
    it goes out: only to an address with orders)."""
    return request.method == "POST" and request.path == "/my-orders" and answer.status_code == 200


def _changes(before: State, after: State, request: Request, answer: Any, shop: Shop) -> list[str]:
    """Every change to what money buys that this request had no right to make."""
    wrong = []
    fresh_link = _asked_for_a_fresh_link(request, answer, shop)
    for job_id, old in before.jobs.items():
        new = after.jobs[job_id]
        for column, was, now in zip(WATCHED, old, new, strict=True):
            if was != now and not (
                fresh_link and job_id == shop.completed_job_id and column in RENEWED
            ):
                wrong.append(f"job {job_id} {column}: {was!r} -> {now!r}")
    for job_id in after.jobs.keys() - before.jobs.keys():
        status, payment = after.jobs[job_id][:2]
        started = request.method == "POST" and request.path == "/checkout"
        if not (started and answer.status_code == 303 and payment == "pending"):
            wrong.append(
                f"new job {job_id} {status}/{payment} from {request.method} {request.path}"
            )
    if after.stripe_events != before.stripe_events:
        wrong.append(f"stripe_events {before.stripe_events} -> {after.stripe_events}")
    if after.downloads != before.downloads:
        wrong.append(f"download_log {before.downloads} -> {after.downloads}")
    new_emails = after.emails[len(before.emails) :]
    sign_in = _asked_to_sign_in(request, answer) and new_emails == [("sign_in", "my-orders")]
    if (
        new_emails
        and not sign_in
        and not (fresh_link and new_emails == [("link", shop.completed_job_id)])
    ):
        wrong.append(f"emails written: {new_emails}")
    return wrong


# ---------------------------------------------------------------------------- the tests


@FUZZ
@given(data=st.data())
def test_no_route_answers_500_or_changes_what_money_buys(
    app: Flask, shop: Shop, data: st.DataObject
) -> None:
    request = data.draw(_requests(shop), label="request")
    before = _state()
    answer = _send(app, request)
    # `pytest --hypothesis-show-statistics` shows what the fuzz reached.
    event(f"{request.method} /{request.path.split('/')[1][:12]} -> {answer.status_code}")
    assert answer.status_code < 500 or (answer.status_code == 503 and request.path == "/readyz"), (
        answer.status_code
    )
    assert _changes(before, _state(), request, answer, shop) == []


CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@FUZZ
@given(
    range_=RANGE,
    if_range=st.one_of(st.none(), st.none(), st.none(), HEADER_VALUE),
    method=st.sampled_from(["GET", "GET", "HEAD"]),
)
def test_range_values_serve_the_right_bytes_and_count_only_what_is_sent(
    app: Flask, shop: Shop, range_: str, if_range: str | None, method: str
) -> None:
    headers = {"Range": range_} | ({"If-Range": if_range} if if_range is not None else {})
    before = _state()
    answer = app.test_client().open(
        f"/download/{TOKEN}/file", method=method, headers=headers, buffered=True
    )
    after = _state()
    status = answer.status_code
    event(f"{method} -> {status}")
    assert status in (200, 206, 416), (range_, status)
    body = answer.get_data()
    if method == "GET" and status == 200:
        assert body == CONTENT
    if method == "GET" and status == 206:
        found = CONTENT_RANGE.fullmatch(answer.headers.get("Content-Range", ""))
        assert found is not None, answer.headers
        start, end, size = (int(group) for group in found.groups())
        assert size == len(CONTENT) and body == CONTENT[start : end + 1]
    # A HEAD, a 416 or an If-Range miss may be logged, with 0 bytes, and is not counted.
    served = len(body) if method == "GET" and status in (200, 206) else 0
    assert after.bytes_logged - before.bytes_logged == served, (range_, status)
    assert after.downloads_counted - before.downloads_counted <= (served > 0)
    column = WATCHED.index("download_bytes")
    charged = after.jobs[shop.completed_job_id][column] - before.jobs[shop.completed_job_id][column]
    assert 0 <= charged <= served, (range_, status, charged)  # a resumed range: the new part
    assert after.jobs[shop.completed_job_id][column] <= MAX_COUNT * len(CONTENT)
    assert after.stripe_events == before.stripe_events and after.emails == before.emails
