"""A purchase with a Stripe promotion code in a real Chromium: the code made on the local Stripe
server's command line, entered on its pay page, and the discount on the job, the receipt and the
download."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from devservers.smtp_sink import SinkHandler, text_of
from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.models import Job
from tests import test_browser
from tests.conftest import LiveApp, WorkerProcess
from tests.factories import make_attachment
from tests.test_browser import _image_size, _open_image_from_catalog

pytestmark = [pytest.mark.browser, pytest.mark.slow]

browser_page = test_browser.browser_page
REPO_ROOT = Path(__file__).resolve().parent.parent


def test_buy_with_a_promotion_code_pay_the_discounted_total_and_download(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
    browser_page,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    live_app.app.config.update(PROMOTION_CODES=True, MIN_PRICE=Decimal("10.00"))
    made = subprocess.run(
        [sys.executable, "-m", "devservers.stripe_local", "promo", "--server", stripe_local.url]
        + ["create", "SAVE20", "--percent-off", "20"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    make_attachment(live_app.app, width=160, height=120, title="Harbour lights")
    db.session.commit()
    start_worker()
    page = browser_page
    _open_image_from_catalog(page, live_app, "Harbour lights")
    page.get_by_label(re.compile("Email for the download link")).fill("saver@example.com")
    page.get_by_role("button", name="Buy").click()

    page.wait_for_url(re.compile(r"/pay/cs_test_"))
    assert page.locator("#total").inner_text() == "10.00 USD"
    page.get_by_label("Promotion code").fill("NOPE")
    page.get_by_role("button", name="Apply").click()
    assert page.get_by_role("alert").inner_text() == "This code is invalid."
    assert page.locator("#total").inner_text() == "10.00 USD"
    page.get_by_label("Promotion code").fill("save20")
    page.get_by_role("button", name="Apply").click()
    page.get_by_text("Promotion code SAVE20 applied.").wait_for()
    assert page.locator("#discount").inner_text() == "−2.00 USD"
    assert page.locator("#total").inner_text() == "8.00 USD"
    page.get_by_role("button", name="Pay").click()

    page.wait_for_url(re.compile(r"/orders/[0-9a-f-]{36}$"))
    page.get_by_role("heading", name="Ready: check your email").wait_for(timeout=40000)
    job = db.session.scalars(select(Job)).one()
    db.session.refresh(job)
    assert (job.status, job.payment_status) == ("completed", "paid")
    assert (job.amount_subtotal, job.amount_discount, job.amount_tax, job.amount_charged) == (
        Decimal("10.00"),
        Decimal("2.00"),
        Decimal("0.00"),
        Decimal("8.00"),
    )

    (receipt,) = smtp_sink.wait_for(1, timeout=30, where=lambda m: "Payment" in str(m["Subject"]))
    body = text_of(receipt)
    assert "Price: $10.00" in body and "Discount: -$2.00" in body
    assert "Total paid: $8.00" in body and "Tax:" not in body
    (ready,) = smtp_sink.wait_for(1, timeout=30, where=lambda m: "ready" in str(m["Subject"]))
    link = re.search(r"http://\S+/download/[0-9a-f]{64}", text_of(ready))
    assert link is not None
    page.goto(link.group(0))
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download").click()
    target = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(target)
    assert _image_size(target) == (640, 480)
    (code,) = stripe_local.state.promotion_codes.values()
    assert (code["code"], code["times_redeemed"]) == ("SAVE20", 1)
