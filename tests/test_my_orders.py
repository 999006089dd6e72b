"""My orders: a one-time sign-in link by email, a seven-day signed cookie, the buyer's orders and
their fresh-link buttons; the same answer for every address, and nothing for anyone else."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select, update

from devservers.smtp_sink import SinkHandler, html_of, text_of
from storefront.buyers.orders import has_orders, orders_of
from storefront.buyers.sign_in import request_sign_in, sign_in_token
from storefront.extensions import db
from storefront.jobs.recovery import sweep
from storefront.models import BuyerSignIn, EmailOutbox, utcnow
from storefront.web.my_orders import COOKIE
from tests.admin_helpers import completed_job, csrf_app, csrf_token, fresh, text  # noqa: F401
from tests.factories import make_attachment, make_job
from tests.test_outbox import _redis_back, _redis_down, _send_queued_emails

SIGN_IN_LINK = re.compile(r"http://shop\.test/my-orders/([0-9a-f]{64})")
DOWNLOAD_LINK = re.compile(r"/download/([0-9a-f]{64})")
WEEK = 7 * 24 * 3600


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Small limits, so that a test reaches them in a few requests."""
    app_config.update(MY_ORDERS_PER_HOUR=2, RESEND_PER_HOUR=2)
    return app_config


def _client_at(app: Flask, address: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def _sign_in_rows() -> list[BuyerSignIn]:
    db.session.expire_all()
    return list(db.session.scalars(select(BuyerSignIn).order_by(BuyerSignIn.id)))


def _link_for(email: str) -> str:
    """A sign-in link's token for `email`, as its email would carry it (no mail needed)."""
    request_sign_in(email)
    row = _sign_in_rows()[-1]
    return sign_in_token(row.outbox_id, row.email, row.expires_at)


def _signed_in(app: Flask, email: str, address: str = "192.0.2.10") -> FlaskClient:
    client = _client_at(app, address)
    response = client.post(f"/my-orders/{_link_for(email)}")
    assert response.status_code == 303 and response.headers["Location"] == "/my-orders"
    return client


def _cookie(response: Any) -> str:
    (header,) = [h for h in response.headers.getlist("Set-Cookie") if h.startswith(COOKIE + "=")]
    return header


def _fresh_link_emails() -> int:
    """Fresh-link emails written into the outbox so far."""
    count = select(func.count(EmailOutbox.id)).where(EmailOutbox.kind == "link")
    return db.session.scalar(count) or 0


def _ask(client: FlaskClient, email: str) -> Any:
    return client.post("/my-orders", data={"email": email})


# Asking for a link -----------------------------------------------------------------------------


def test_a_link_is_mailed_only_to_an_address_with_paid_orders(
    app: Flask, smtp_sink: SinkHandler, redis_url: str
) -> None:
    attachment = make_attachment(app)
    completed_job(app, attachment, email="Ana@Example.com")
    make_job(attachment, email="ben@example.com", status="awaiting_payment")
    make_job(attachment, email="ben@example.com", status="abandoned")
    db.session.commit()
    assert has_orders("  ana@EXAMPLE.com ") and not has_orders("ben@example.com")

    # The request does the same for every address: a link and its email written down.
    for email in (" ANA@example.com", "ben@example.com", "nobody@example.com"):
        request_sign_in(email)
    rows = _sign_in_rows()
    assert [row.email for row in rows] == [
        "ana@example.com",
        "ben@example.com",
        "nobody@example.com",
    ]
    assert all(row.used_at is None for row in rows)
    assert dt.timedelta(minutes=59) < rows[0].expires_at - utcnow() <= dt.timedelta(hours=1)
    # The database keeps the token's SHA-256, never the token.
    token = sign_in_token(rows[0].outbox_id, rows[0].email, rows[0].expires_at)
    assert rows[0].token_hash == hashlib.sha256(token.encode()).hexdigest() != token

    # The email task decides: checkouts never paid are no orders, and strangers get no mail.
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.messages
    assert mail["To"] == "ana@example.com" and token in text_of(mail)
    db.session.expire_all()
    outcomes = [db.session.get(EmailOutbox, row.outbox_id) for row in rows]
    assert [(o.kind, o.job_id, o.outcome) for o in outcomes if o is not None] == [
        ("sign_in", "my-orders", "sent"),
        ("sign_in", "my-orders", "no orders for this address"),
        ("sign_in", "my-orders", "no orders for this address"),
    ]


def test_the_form_answers_the_same_and_mails_only_an_address_with_orders(
    app: Flask, client: FlaskClient, smtp_sink: SinkHandler, redis_url: str
) -> None:
    completed_job(app, email="ana@example.com")
    known = _ask(client, "ana@example.com")
    unknown = _ask(client, "zed@example.com")
    assert known.status_code == unknown.status_code == 200
    assert known.get_data(as_text=True).replace("ana@", "zed@") == unknown.get_data(as_text=True)
    assert "a sign-in link is on its way" in text(known)
    assert COOKIE not in known.headers.get("Set-Cookie", "")

    _send_queued_emails(app, redis_url)  # every email queued so far is sent (or not) now
    (mail,) = smtp_sink.messages
    assert mail["To"] == "ana@example.com"
    assert mail["Subject"] == "Your sign-in link for My orders"
    assert len(_sign_in_rows()) == 2  # the same work for both addresses


def test_a_link_asked_for_while_redis_is_down_is_mailed_once_it_is_back(
    app: Flask, client: FlaskClient, smtp_sink: SinkHandler, redis_url: str
) -> None:
    completed_job(app, email="ana@example.com", email_sent=True)
    _redis_down(app)
    assert _ask(client, "ana@example.com").status_code == 200
    (row,) = _sign_in_rows()
    outbox = db.session.get(EmailOutbox, row.outbox_id)
    assert outbox is not None and outbox.handed_at is None
    _redis_back(app)
    assert sweep(now=utcnow() + dt.timedelta(minutes=5)).emails == ["my-orders"]
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    found = SIGN_IN_LINK.search(text_of(mail))
    assert found is not None
    assert client.post(f"/my-orders/{found.group(1)}").status_code == 303


def test_a_bad_address_gets_a_400_and_writes_nothing(app: Flask, client: FlaskClient) -> None:
    completed_job(app, email="ana@example.com")
    for value in ("", "not-an-address", "a" * 250 + "@example.com"):
        response = _ask(client, value)
        assert response.status_code == 400
        assert "aria-invalid" in response.get_data(as_text=True)
    assert _sign_in_rows() == []


# The link and the sign-in ----------------------------------------------------------------------


def test_the_mailed_link_signs_in_once_and_its_get_changes_nothing(
    app: Flask, client: FlaskClient, smtp_sink: SinkHandler, redis_url: str
) -> None:
    completed_job(app, email="ana@example.com")
    _ask(client, "ana@example.com")
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    found = SIGN_IN_LINK.search(text_of(mail))
    assert found is not None and found.group(0) in html_of(mail)
    token = found.group(1)

    # A mail scanner opens the link first: nothing is used up.
    for _ in range(2):
        page = client.get(f"/my-orders/{token}")
        assert page.status_code == 200 and "Sign in to My orders" in text(page)
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert page.headers["Cache-Control"] == "no-store"
    assert _sign_in_rows()[0].used_at is None

    browser = app.test_client()
    signed_in = browser.post(f"/my-orders/{token}")
    assert signed_in.status_code == 303
    cookie = _cookie(signed_in)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and f"Max-Age={WEEK}" in cookie
    assert "Secure" not in cookie  # plain http in development
    assert _sign_in_rows()[0].used_at is not None
    listing = browser.get("/my-orders")
    assert listing.status_code == 200 and "Orders placed with ana@example.com" in text(listing)

    # Used: a second click, or anyone else, gets the 410 page with the form for a new link.
    for other in (browser, app.test_client()):
        again = other.post(f"/my-orders/{token}")
        assert again.status_code == 410 and "This sign-in link has been used" in text(again)
        assert 'action="/my-orders"' in again.get_data(as_text=True)
    assert app.test_client().get(f"/my-orders/{token}").status_code == 410
    # The signed-in buyer opening the mail's link again simply gets their orders.
    reopened = browser.get(f"/my-orders/{token}")
    assert reopened.status_code == 303 and reopened.headers["Location"] == "/my-orders"


def test_two_clicks_at_once_sign_in_once(app: Flask) -> None:
    completed_job(app, email="ana@example.com")
    token = _link_for("ana@example.com")
    start = threading.Barrier(2)
    statuses: list[int] = []

    def click() -> None:
        with app.app_context():
            start.wait()
            statuses.append(app.test_client().post(f"/my-orders/{token}").status_code)
            db.session.remove()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(statuses) == [303, 410]


def test_an_expired_link_is_a_410_that_offers_a_new_one(app: Flask, client: FlaskClient) -> None:
    completed_job(app, email="ana@example.com")
    token = _link_for("ana@example.com")
    db.session.execute(update(BuyerSignIn).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    db.session.commit()
    for response in (client.get(f"/my-orders/{token}"), client.post(f"/my-orders/{token}")):
        assert response.status_code == 410
        assert "This sign-in link has expired" in text(response)
        assert "Email me a sign-in link" in text(response)
        assert COOKIE not in response.headers.get("Set-Cookie", "")
    assert _sign_in_rows()[0].used_at is None


def test_an_unknown_link_is_a_404(app: Flask, client: FlaskClient) -> None:
    for token in ("0" * 64, "not-a-token", "A" * 64):
        for response in (client.get(f"/my-orders/{token}"), client.post(f"/my-orders/{token}")):
            assert response.status_code == 404
            assert "We don't recognise this sign-in link" in text(response)


def test_the_sign_in_email_of_a_link_used_or_expired_before_it_went_out_is_not_sent(
    app: Flask, smtp_sink: SinkHandler, redis_url: str
) -> None:
    completed_job(app, email="ana@example.com")
    request_sign_in("ana@example.com")
    db.session.execute(update(BuyerSignIn).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    db.session.commit()
    _send_queued_emails(app, redis_url)
    assert smtp_sink.messages == []
    outbox = db.session.get(EmailOutbox, _sign_in_rows()[0].outbox_id, populate_existing=True)
    assert outbox is not None and outbox.outcome == "the link expired before it was sent"


# The signed cookie -----------------------------------------------------------------------------


def test_over_https_the_cookie_is_secure(app: Flask) -> None:
    completed_job(app, email="ana@example.com")
    client = app.test_client()
    response = client.post(
        f"/my-orders/{_link_for('ana@example.com')}", base_url="https://shop.test"
    )
    assert response.status_code == 303 and "Secure" in _cookie(response)


def test_the_session_ends_after_seven_days(app: Flask) -> None:
    completed_job(app, email="ana@example.com")
    client = _signed_in(app, "ana@example.com")
    db.session.execute(
        update(BuyerSignIn).values(used_at=utcnow() - dt.timedelta(days=7, minutes=1))
    )
    db.session.commit()
    page = client.get("/my-orders")
    assert page.status_code == 200
    assert "Your sign-in has ended" in text(page) and "ana@example.com" not in text(page)
    assert "Max-Age=0" in _cookie(page) or "expires=Thu, 01 Jan 1970" in _cookie(page)


def test_signing_out_ends_the_session_even_for_a_copy_of_the_cookie(app: Flask) -> None:
    completed_job(app, email="ana@example.com")
    client = _signed_in(app, "ana@example.com")
    copied = client.get_cookie(COOKIE)
    assert copied is not None
    thief = app.test_client()
    thief.set_cookie(COOKIE, copied.value)
    assert "Orders placed with ana@example.com" in text(thief.get("/my-orders"))

    out = client.post("/my-orders/sign-out", follow_redirects=True)
    assert "You're signed out of My orders." in text(out)
    assert client.get_cookie(COOKIE) is None
    assert _sign_in_rows()[0].signed_out_at is not None
    assert "ana@example.com" not in text(thief.get("/my-orders"))


def test_a_forged_cookie_signs_nobody_in(app: Flask) -> None:
    completed_job(app, email="ana@example.com")
    _signed_in(app, "ana@example.com")
    session_id = _sign_in_rows()[0].id
    for key in ("another-key", "test-secret-key"):
        salt = "smi-my-orders" if key == "another-key" else "another-salt"
        forged = URLSafeTimedSerializer(key, salt=salt).dumps(session_id)
        stranger = app.test_client()
        stranger.set_cookie(COOKIE, forged)
        page = stranger.get("/my-orders")
        assert "ana@example.com" not in text(page) and "Email me a sign-in link" in text(page)


# The list and its buttons ----------------------------------------------------------------------


def test_the_list_shows_every_paid_order_of_the_address_and_no_one_elses(app: Flask) -> None:
    lighthouse = make_attachment(app, width=160, height=120, title="Lighthouse at dusk")
    harbour = make_attachment(app, title="Quiet harbour")
    ready = completed_job(app, lighthouse, email="Ana@Example.com")
    refunded_part = completed_job(
        app, harbour, email="ana@example.com", resolution="8x", refund_amount=Decimal("0.50")
    )
    failed = make_job(
        harbour,
        email="ana@example.com",
        status="failed",
        payment_status="refunded",
        paid_at=utcnow(),
        refund_amount=Decimal("0.50"),
    )
    queued = make_job(harbour, email="ana@example.com", status="pending", payment_status="paid")
    make_job(harbour, email="ana@example.com", status="abandoned")
    others = completed_job(app, make_attachment(app, title="Someone else's"), email="bo@x.test")
    db.session.commit()
    assert [o.job.job_id for o in orders_of("ANA@example.com")] == [
        queued.job_id,
        failed.job_id,
        refunded_part.job_id,
        ready.job_id,
    ]

    page = text(_signed_in(app, "ana@example.com").get("/my-orders"))
    assert "Lighthouse at dusk" in page and "Quiet harbour" in page
    assert "Someone else's" not in page and others.job_id not in page
    assert page.count('class="my-order"') == 4
    assert "4x · 640 × 480 px" in page and "8x" in page
    assert (ready.paid_at or utcnow()).strftime("%d %B %Y") in page
    for words in ("Ready", "Paid: in the queue", "Couldn't be processed: refunded"):
        assert words in page
    assert "$1.92" in page and "$0.50" in page
    assert page.count("Email me a fresh download link") == 2  # the two completed ones
    assert f'href="/orders/{ready.job_id}"' in page


def test_the_order_page_opens_for_the_signed_in_buyer_only(app: Flask) -> None:
    mine = completed_job(app, email="ana@example.com")
    theirs = completed_job(app, email="bo@example.com")
    client = _signed_in(app, "ana@example.com")
    assert client.get(f"/orders/{mine.job_id}").status_code == 200
    assert client.get(f"/orders/{theirs.job_id}").status_code == 404
    assert app.test_client().get(f"/orders/{mine.job_id}").status_code == 404


def test_the_fresh_link_button_mails_a_working_link_to_the_orders_address(
    app: Flask, smtp_sink: SinkHandler, redis_url: str
) -> None:
    job = completed_job(app, email="Ana@Example.com", email_sent=True)
    client = _signed_in(app, "ana@example.com")
    _send_queued_emails(app, redis_url)  # the sign-in email of `_signed_in`
    smtp_sink.clear()

    answer = client.post("/my-orders/fresh-link", data={"job_id": job.job_id})
    assert answer.status_code == 303 and answer.headers["Location"] == "/my-orders"
    assert "We've emailed a fresh link" in text(client.get("/my-orders"))
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    assert mail["To"] == "Ana@Example.com"
    assert "A fresh download link" in str(mail["Subject"])
    found = DOWNLOAD_LINK.search(text_of(mail))
    assert found is not None
    assert client.get(f"/download/{found.group(1)}").status_code == 200
    assert fresh(job.job_id).download_token != "a" * 64


def test_another_buyers_order_is_a_404_and_changes_nothing(app: Flask) -> None:
    theirs = completed_job(app, email="bo@example.com")
    before = (theirs.download_token, theirs.download_expires_at, theirs.updated_at)
    completed_job(app, email="ana@example.com")
    client = _signed_in(app, "ana@example.com")
    for job_id in (theirs.job_id, "no-such-order"):
        assert client.post("/my-orders/fresh-link", data={"job_id": job_id}).status_code == 404
    job = fresh(theirs.job_id)
    assert (job.download_token, job.download_expires_at, job.updated_at) == before
    assert _fresh_link_emails() == 0


def test_an_order_whose_file_is_gone_has_no_button_and_gets_no_link(app: Flask) -> None:
    job = completed_job(app, email="ana@example.com")
    job.upscaled_file_path = "deliveries/gone/file.jpg"
    db.session.commit()
    client = _signed_in(app, "ana@example.com")
    page = text(client.get("/my-orders"))
    assert "Delivered (the file is no longer kept)" in page
    assert "Email me a fresh download link" not in page
    answer = client.post("/my-orders/fresh-link", data={"job_id": job.job_id})
    assert answer.status_code == 303
    assert "no longer available" in text(client.get("/my-orders"))
    assert _fresh_link_emails() == 0


def test_a_signed_out_browser_pressing_the_button_is_sent_to_sign_in(app: Flask) -> None:
    job = completed_job(app, email="ana@example.com")
    client = app.test_client()
    answer = client.post("/my-orders/fresh-link", data={"job_id": job.job_id})
    assert answer.status_code == 303
    assert "Your sign-in has ended" in text(client.get("/my-orders"))
    assert _fresh_link_emails() == 0


def test_the_header_links_to_my_orders(client: FlaskClient) -> None:
    assert '<a class="my-orders-link" href="/my-orders">My orders</a>' in text(client.get("/"))


# Rate limits -----------------------------------------------------------------------------------


def test_sign_in_links_are_limited_per_address_asked_about_and_per_client(app: Flask) -> None:
    completed_job(app, email="ana@example.com")
    client = _client_at(app, "192.0.2.20")
    for _ in range(2):
        assert _ask(client, "ana@example.com").status_code == 200
    refused = _ask(_client_at(app, "192.0.2.21"), " ANA@example.com ")
    assert refused.status_code == 429 and "wait an hour" in text(refused)
    assert len(_sign_in_rows()) == 2
    # Four times MY_ORDERS_PER_HOUR per client, whatever the addresses.
    for n in range(6):
        assert _ask(client, f"buyer{n}@example.com").status_code == 200
    assert _ask(client, "buyer9@example.com").status_code == 429


def test_the_fresh_link_button_is_limited_as_the_fresh_link_form(app: Flask) -> None:
    job = completed_job(app, email="ana@example.com")
    client = _signed_in(app, "ana@example.com")
    for _ in range(2):
        assert client.post("/my-orders/fresh-link", data={"job_id": job.job_id}).status_code == 303
    refused = client.post("/my-orders/fresh-link", data={"job_id": job.job_id})
    assert refused.status_code == 429
    assert _fresh_link_emails() == 2


# CSRF ------------------------------------------------------------------------------------------


def test_every_form_needs_its_csrf_token(app: Flask, csrf_app: Flask) -> None:  # noqa: F811
    job = completed_job(app, email="ana@example.com")
    with csrf_app.app_context():
        token = _link_for("ana@example.com")
    browser = csrf_app.test_client()

    assert _ask(browser, "ana@example.com").status_code == 400
    assert browser.post(f"/my-orders/{token}").status_code == 400
    assert _sign_in_rows()[0].used_at is None and len(_sign_in_rows()) == 1

    page = browser.get(f"/my-orders/{token}").get_data(as_text=True)
    signed_in = browser.post(f"/my-orders/{token}", data={"csrf_token": csrf_token(page)})
    assert signed_in.status_code == 303
    listing = browser.get("/my-orders").get_data(as_text=True)
    assert browser.post("/my-orders/fresh-link", data={"job_id": job.job_id}).status_code == 400
    assert browser.post("/my-orders/sign-out").status_code == 400
    assert "Orders placed with ana@example.com" in text(browser.get("/my-orders"))
    assert _fresh_link_emails() == 0
    with_token = {"job_id": job.job_id, "csrf_token": csrf_token(listing)}
    assert browser.post("/my-orders/fresh-link", data=with_token).status_code == 303
    assert _fresh_link_emails() == 1


def test_a_link_asked_for_on_a_german_page_is_mailed_in_german(
    app: Flask, smtp_sink: SinkHandler, redis_url: str
) -> None:
    completed_job(app, make_attachment(app), email="ana@example.com")
    db.session.commit()
    client = app.test_client()
    client.set_cookie("lang", "de")
    assert _ask(client, "ana@example.com").status_code == 200
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.messages
    assert mail["Subject"] == "Ihr Anmeldelink für „Meine Bestellungen“"
    assert "Öffnen Sie diesen Link innerhalb von 60 Minuten" in text_of(mail)
    assert 'lang="de"' in html_of(mail)
    assert SIGN_IN_LINK.search(text_of(mail)) is not None
