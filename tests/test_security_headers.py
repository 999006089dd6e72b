"""Every page says how it may be used (CSP, framing, sniffing, referrers, HTTPS); the order page
drops Stripe's session id from its address; request bodies are limited per page, before reading."""

from __future__ import annotations

import io
import re
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from devservers.stripe_local import LocalStripe
from storefront import create_app, funnel
from storefront.extensions import db
from storefront.jobs.delivery import token_digest
from storefront.models import FunnelEvent, Job, Post
from tests import admin_helpers
from tests.admin_helpers import ADMIN_EMAIL, ADMIN_PASSWORD, completed_job, fresh
from tests.conftest import LiveApp
from tests.factories import make_attachment, make_post

admin_user = admin_helpers.admin_user
admin_client = admin_helpers.admin_client
csrf_app = admin_helpers.csrf_app

TOKEN = "fedcba9876543210" * 4
CSP_NEEDS = ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'")


def _assert_safe_headers(response: Any, referrer: str = "same-origin") -> None:
    headers = response.headers
    policy = headers.get("Content-Security-Policy", "")
    assert all(part in policy for part in CSP_NEEDS), policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert headers.get("X-Frame-Options") == "DENY"
    assert headers.get("X-Content-Type-Options") == "nosniff"
    assert headers.get("Referrer-Policy") == referrer


def test_public_pages_carry_the_security_headers(app: Flask, client: FlaskClient) -> None:
    """Finding 4: public pages had no CSP, no framing rule, no nosniff, no referrer policy."""
    attachment = make_attachment(app, title="Pier")
    db.session.commit()
    for url in ("/", f"/posts/{attachment.post.slug}", f"/images/{attachment.id}", "/nowhere"):
        response = client.get(url)
        assert response.status_code in (200, 404), url
        _assert_safe_headers(response)
        assert "Strict-Transport-Security" not in response.headers  # plain HTTP here
    _assert_safe_headers(client.get("/download/resend"))
    _assert_safe_headers(client.post("/checkout", data={"attachment_id": "x"}))  # a 400 page


def test_download_pages_keep_no_referrer(app: Flask, client: FlaskClient) -> None:
    completed_job(app, download_token=token_digest(TOKEN))
    _assert_safe_headers(client.get(f"/download/{TOKEN}"), referrer="no-referrer")
    _assert_safe_headers(client.get(f"/download/{'0' * 64}"), referrer="no-referrer")
    file = client.get(f"/download/{TOKEN}/file", buffered=True)
    assert file.status_code == 200
    _assert_safe_headers(file, referrer="no-referrer")


def test_admin_pages_carry_them_once_and_stay_uncached(admin_client: FlaskClient) -> None:
    for url in ("/admin/", "/admin/jobs", "/admin/settings"):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        _assert_safe_headers(response)
        assert response.headers["Cache-Control"] == "no-store"
        assert len(response.headers.getlist("X-Frame-Options")) == 1
    _assert_safe_headers(admin_helpers.sign_in(admin_client.application.test_client(), "x", "y"))


@pytest.fixture
def production(app: Flask, app_config: dict[str, Any]) -> Iterator[Flask]:
    """The app as SMI_ENV=production builds it, on the test's database."""
    secrets = {"STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_WEBHOOK_SECRET": "whsec_x"}
    application = create_app({**app_config, **secrets, "SMI_ENV": "production"})
    yield application
    with application.app_context():
        db.engine.dispose()


def test_production_asks_browsers_for_https_only(production: Flask) -> None:
    for url in ("/", "/healthz", "/admin/login"):
        response = production.test_client().get(url)
        assert "max-age=31536000" in response.headers["Strict-Transport-Security"], url
        assert "includeSubDomains" in response.headers["Strict-Transport-Security"]
        _assert_safe_headers(response)


def _buy(app: Flask) -> Job:
    attachment = make_attachment(app, title="Night sky")
    db.session.commit()
    app.test_client().post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x"})
    return db.session.scalars(select(Job)).one()


def test_back_from_stripe_the_order_page_drops_the_session_id(
    app: Flask, stripe_local: LocalStripe
) -> None:
    """Finding 4: the session id, enough to open the order, stayed in the address bar."""
    job = _buy(app)
    session = stripe_local.pay(job.stripe_checkout_session_id)  # no webhook URL: none arrives
    browser = app.test_client()
    back = browser.get(f"/orders/{job.job_id}?session_id={session['id']}")
    assert back.status_code == 303
    assert back.headers["Location"] == f"/orders/{job.job_id}"
    # The first visit did its work: the payment is confirmed and the order remembered.
    assert (fresh(job.job_id).status, fresh(job.job_id).payment_status) == ("pending", "paid")
    page = browser.get(back.headers["Location"])
    assert page.status_code == 200 and "Paid: in the queue" in page.get_data(as_text=True)
    assert session["id"] not in page.get_data(as_text=True)
    # The cookie opens it from now on; the clean address alone opens nothing elsewhere.
    assert app.test_client().get(f"/orders/{job.job_id}").status_code == 404
    again = browser.get(f"/orders/{job.job_id}?session_id={session['id']}")
    assert again.status_code == 303 and again.headers["Location"] == f"/orders/{job.job_id}"


# Finding 5: request bodies ------------------------------------------------------------------


def test_public_forms_over_64_kib_are_refused_unread(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    padding = "x" * (64 * 1024)
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": "", "note": padding}
    refused = client.post("/checkout", data=data)
    assert refused.status_code == 413
    assert "That file is too large" in refused.get_data(as_text=True)  # the error page
    assert db.session.scalar(select(func.count(Job.id))) == 0
    resend = {"email": "a@example.com", "job_id": "x", "note": padding}
    assert client.post("/download/resend", data=resend).status_code == 413
    assert client.post("/admin/login", data={"email": padding, "password": "x"}).status_code == 413
    # Under the limit the form is read: here, refused for naming no image of the catalog.
    small = {"attachment_id": "none", "resolution": "4x", "note": "x" * 60_000}
    assert client.post("/checkout", data=small).status_code == 400


def test_the_limit_comes_before_the_csrf_check_reads_the_form(csrf_app: Flask) -> None:
    """In production the CSRF check reads the form first thing: the limit must be set before."""
    client = csrf_app.test_client()
    big = client.post("/download/resend", data={"email": "a@example.com", "note": "x" * 70_000})
    assert big.status_code == 413
    small = client.post("/download/resend", data={"email": "a@example.com"})
    assert small.status_code == 400 and "The form had expired" in small.get_data(as_text=True)


def test_webhooks_take_up_to_1_mib(app: Flask, client: FlaskClient) -> None:
    app.config["STRIPE_WEBHOOK_SECRET"] = "whsec_test"
    signature = {"Stripe-Signature": "t=1,v1=0"}
    big = client.post("/webhooks/stripe", data=b"{" + b" " * 1024 * 1024, headers=signature)
    assert big.status_code == 413
    under = client.post("/webhooks/stripe", data=b"{" + b" " * 900_000, headers=signature)
    assert under.status_code == 400  # read, and refused for its signature


def test_admin_forms_and_the_upload_keep_their_room(app: Flask, admin_client: FlaskClient) -> None:
    post = make_post()
    db.session.commit()
    text = "Words " * 30_000  # 180 KB of a post's text, over the public forms' limit
    edit = admin_client.post(f"/admin/catalog/posts/{post.id}", data={"title": "T", "body": text})
    assert edit.status_code == 400 and "20000" in edit.get_data(as_text=True)  # the form's rule
    app.config["ADMIN_UPLOAD_MAX_BYTES"] = 200_000
    url = f"/admin/catalog/posts/{post.id}/images"

    def upload(size: int) -> int:
        data = {"title": "T", "alt_text": "A", "image": (io.BytesIO(b"\xff" * size), "big.jpg")}
        return admin_client.post(url, data=data, content_type="multipart/form-data").status_code

    assert upload(199_000) == 400  # read: "not an image we can read"
    assert upload(200_000 + 70_000) == 413
    assert db.session.scalars(select(Post)).one().title == post.title


def _raw_request(live: LiveApp, head: str, body: Iterable[bytes] = ()) -> bytes:
    """Send a request as bytes over a socket, then read the answer (without waiting for EOF:
    the connection stays open, the rest of a body may be on its way)."""
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for piece in body:
            connection.sendall(piece)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
        length = re.search(rb"Content-Length: (\d+)", answer, re.IGNORECASE)
        assert length is not None, answer
        while len(answer.partition(b"\r\n\r\n")[2]) < int(length.group(1)):
            answer += connection.recv(65536)
    return answer


def test_over_http_a_declared_oversized_body_is_refused_before_it_is_sent(
    live_app: LiveApp,
) -> None:
    """Only the headers go out: the answer comes without the app waiting for any of the body."""
    head = (
        "POST /checkout HTTP/1.1\nHost: shop\nContent-Type: application/x-www-form-urlencoded\n"
        f"Content-Length: {30 * 1024 * 1024}\nConnection: close\n"
    )
    answer = _raw_request(live_app, head)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"That file is too large" in answer and b"Traceback" not in answer


def test_over_http_a_chunked_body_is_cut_off_at_the_limit(live_app: LiveApp) -> None:
    """No Content-Length: the body is read up to the webhook's 1 MiB, and no further."""
    head = (
        "POST /webhooks/stripe HTTP/1.1\nHost: shop\nTransfer-Encoding: chunked\n"
        "Stripe-Signature: t=1,v1=0\nConnection: close\n"
    )
    piece = b"x" * 65536
    # Just over 1 MiB, and no closing chunk: the app cannot have waited for the end of it.
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(17))
    answer = _raw_request(live_app, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_over_http_oversized_forms_get_the_error_page(live_app: LiveApp) -> None:
    big_form = {"email": "a@example.com", "job_id": "x", "note": "x" * 100_000}
    refused = requests.post(f"{live_app.url}/download/resend", data=big_form, timeout=15)
    assert refused.status_code == 413 and "That file is too large" in refused.text

    def chunked() -> Iterator[bytes]:
        yield b"email=a%40example.com&job_id=x&note="
        for _ in range(5):
            yield b"x" * 16384

    streamed = requests.post(
        f"{live_app.url}/download/resend",
        data=chunked(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=15,
    )
    assert streamed.status_code == 413 and "That file is too large" in streamed.text


# In a real Chromium, under the policy: nothing refused, and the funnel's bars drawn.


@pytest.mark.browser
@pytest.mark.slow
def test_pages_work_under_the_policy_in_chromium(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    admin_user: object,
    new_browser_page: Any,
    tmp_path: Path,
) -> None:
    attachment = make_attachment(live_app.app, title="Harbour")
    for kind, count in ((funnel.IMAGE_VIEWED, 8), (funnel.CHECKOUT_STARTED, 4), (funnel.PAID, 1)):
        db.session.add_all(FunnelEvent(kind=kind) for _ in range(count))
    db.session.commit()
    page = new_browser_page(1366, 900)
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text))

    page.goto(f"{live_app.url}/images/{attachment.id}")
    page.get_by_role("button", name="Buy").click()
    page.wait_for_url(re.compile(r"/pay/cs_test_"))
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(re.compile(r"/orders/[0-9a-f-]{36}$"))  # the session id dropped
    page.get_by_text(re.compile("Paid: in the queue|Confirming your payment")).wait_for()

    page.goto(f"{live_app.url}/admin/login")
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Dashboard").wait_for()
    assert not [text for text in refused if "Content Security Policy" in text], refused
    bars = page.locator("#funnel .hbar rect")
    widths = bars.evaluate_all("rects => rects.map(r => r.getBoundingClientRect().width)")
    full = page.locator("#funnel .hbar").first.bounding_box()["width"]
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    # However many of the steps the Buy above added, each bar is its count over image views.
    counts = [int(cell) for cell in page.locator("#funnel tbody td:nth-child(2)").all_inner_texts()]
    assert full > 100 and counts[0] >= 8 and len(widths) == len(counts) == 5
    assert all(abs(w / full - c / counts[0]) < 0.01 for w, c in zip(widths, counts, strict=True))
    assert widths[0] > widths[1] > widths[2] > 0 == widths[3]


def test_a_nul_byte_in_the_address_is_a_404_not_a_500(client: FlaskClient) -> None:
    """PostgreSQL refuses NUL in text: such an id must never reach a query."""
    for path in ("/orders/%00", "/download/%00abc", "/images/1?cancelled=%00"):
        response = client.get(path)
        assert response.status_code == 404, path
