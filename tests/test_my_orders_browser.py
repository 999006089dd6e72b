"""My orders in a real Chromium: buy once, then sign in by email and get a fresh link."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from devservers.smtp_sink import SinkHandler, text_of
from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from tests.conftest import LiveApp, WorkerProcess
from tests.factories import make_attachment
from tests.test_browser import _open_image_from_catalog

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _link_in_mail(smtp_sink: SinkHandler, subject: str, pattern: str) -> str:
    (mail,) = smtp_sink.wait_for(1, timeout=30, where=lambda m: subject in str(m["Subject"]))
    found = re.search(pattern, text_of(mail))
    assert found is not None, text_of(mail)
    return found.group(0)


def test_buy_then_find_the_order_again_by_email_and_get_a_fresh_link(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
    new_browser_page,  # type: ignore[no-untyped-def]
) -> None:
    make_attachment(live_app.app, width=160, height=120, title="Lighthouse at dusk")
    db.session.commit()
    start_worker()
    page = new_browser_page(390, 844)
    _open_image_from_catalog(page, live_app, "Lighthouse at dusk")
    page.get_by_label(re.compile("Email for the download link")).fill("reader@example.com")
    page.get_by_role("button", name="Buy").click()
    page.wait_for_url(re.compile(r"/pay/cs_test_"))
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(re.compile(r"/orders/[0-9a-f-]{36}$"))
    page.get_by_role("heading", name="Ready: check your email").wait_for(timeout=40000)

    # Another day, another browser: the header's link, the email address, the mail.
    page = new_browser_page(1280, 800)
    page.goto(live_app.url + "/")
    page.get_by_role("link", name="My orders").click()
    page.wait_for_url(re.compile(r"/my-orders$"))
    page.get_by_label("Email address you used for your orders").fill("Reader@Example.com")
    page.get_by_role("button", name="Email me a sign-in link").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    sign_in_link = _link_in_mail(
        smtp_sink, "Your sign-in link for My orders", r"http://\S+/my-orders/[0-9a-f]{64}"
    )

    page.goto(sign_in_link)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/my-orders$"))
    order = page.locator("li.my-order")
    assert order.count() == 1
    assert order.get_by_role("heading", name="Lighthouse at dusk").is_visible()
    assert order.get_by_text("Ready", exact=True).is_visible()
    assert order.get_by_text("$0.50").is_visible()

    order.get_by_role("button", name="Email me a fresh download link").click()
    page.get_by_text("We've emailed a fresh link").wait_for()
    download_link = _link_in_mail(
        smtp_sink, "A fresh download link", r"http://\S+/download/[0-9a-f]{64}"
    )
    page.goto(download_link)
    assert page.get_by_role("heading", name="Your high-resolution image is ready").is_visible()
