"""The buyer's whole path in a real Chromium: catalog, image, Buy, Stripe, order, download."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from devservers.smtp_sink import SinkHandler, text_of
from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.models import Job
from tests.conftest import LiveApp, WorkerProcess
from tests.factories import make_attachment

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def browser_page(new_browser_page):  # type: ignore[no-untyped-def]
    """A phone-sized page that accepts downloads."""
    return new_browser_page(390, 844, accept_downloads=True)


def _image_size(source: object) -> tuple[int, int]:
    with Image.open(source) as image:  # type: ignore[arg-type]
        return image.size


def _open_image_from_catalog(page, live: LiveApp, title: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(live.url + "/")
    page.get_by_role("link", name=f"Download Hi-Res: {title}").click()
    page.wait_for_url(re.compile(r"/images/\d+$"))
    assert page.get_by_role("heading", name=title).is_visible()
    assert page.get_by_role("radio", name=re.compile(r"\b4x\b")).is_checked()


@pytest.mark.parametrize("engine", ["local", "neural"])
def test_buy_pay_watch_the_order_then_download_from_the_email(
    engine: str,
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
    browser_page,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    live_app.app.config["UPSCALER"] = engine
    make_attachment(live_app.app, width=160, height=120, title="Lighthouse at dusk")
    db.session.commit()
    start_worker(UPSCALER=engine)
    page = browser_page
    _open_image_from_catalog(page, live_app, "Lighthouse at dusk")
    assert page.get_by_text("640 × 480 px").is_visible()
    page.get_by_label(re.compile("Email for the download link")).fill("reader@example.com")
    page.get_by_role("button", name="Buy").click()

    page.wait_for_url(re.compile(r"/pay/cs_test_"))
    assert page.get_by_text("0.50 USD").first.is_visible()
    page.get_by_role("button", name="Pay").click()

    # Back from Stripe with ?session_id=, then on to the order's address without it.
    page.wait_for_url(re.compile(r"/orders/[0-9a-f-]{36}$"))
    page.get_by_text(
        re.compile("Paid: in the queue|Upscaling your image|Ready: check your email")
    ).wait_for()
    page.get_by_role("heading", name="Ready: check your email").wait_for(timeout=40000)
    job = db.session.scalars(select(Job)).one()
    assert (job.status, job.payment_status) == ("completed", "paid")

    mails = smtp_sink.wait_for(1, timeout=30, where=lambda m: "ready" in str(m["Subject"]))
    link = re.search(r"http://\S+/download/[0-9a-f]{64}", text_of(mails[0]))
    assert link is not None
    page.goto(link.group(0))
    assert page.get_by_role("heading", name="Your high-resolution image is ready").is_visible()
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download").click()
    download = download_info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    assert download.suggested_filename.endswith("-4x.jpg")
    assert _image_size(target) == (640, 480)


def test_cancel_on_stripe_comes_back_to_the_image_with_nothing_charged(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    browser_page,  # type: ignore[no-untyped-def]
) -> None:
    make_attachment(live_app.app, width=160, height=120, title="Quiet harbour")
    db.session.commit()
    page = browser_page
    _open_image_from_catalog(page, live_app, "Quiet harbour")
    page.get_by_role("button", name="Buy").click()
    page.wait_for_url(re.compile(r"/pay/cs_test_"))
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_url(re.compile(r"/images/\d+\?cancelled=1$"))
    assert page.get_by_text("Checkout cancelled: nothing was charged").is_visible()
    job = db.session.scalars(select(Job)).one()
    db.session.refresh(job)
    assert (job.status, job.payment_status, job.paid_at) == ("awaiting_payment", "pending", None)
    assert stripe_local.state.payment_intents == {}
