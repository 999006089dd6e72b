"""The owner in a real Chromium: sign in, find a job by email, refund half of it, see the refund."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from sqlalchemy import select

from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.models import Job
from tests import admin_helpers
from tests.admin_helpers import ADMIN_EMAIL, ADMIN_PASSWORD, fresh
from tests.conftest import LiveApp, wait_until
from tests.factories import make_attachment

pytestmark = [pytest.mark.browser, pytest.mark.slow]

admin_user = admin_helpers.admin_user


@pytest.fixture
def laptop_page(new_browser_page):  # type: ignore[no-untyped-def]
    """A page the size of a laptop screen."""
    return new_browser_page(1366, 768)


def _paid_job(live: LiveApp, stripe_local: LocalStripe, email: str) -> Job:
    attachment = make_attachment(live.app, width=1500, height=1500, title="Old harbour")
    db.session.commit()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": email}
    assert live.app.test_client().post("/checkout", data=data).status_code == 303
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).one()
    stripe_local.pay(job.stripe_checkout_session_id)
    assert stripe_local.wait_idle(15)
    return wait_until(lambda: (j := fresh(job.job_id)).payment_status == "paid" and j)


def test_sign_in_find_a_job_by_email_refund_half_and_see_it(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    admin_user: object,
    laptop_page,  # type: ignore[no-untyped-def]
) -> None:
    job = _paid_job(live_app, stripe_local, "harbour.fan@example.com")
    assert job.amount_charged == Decimal("1.08")
    page = laptop_page

    page.goto(live_app.url + "/admin/")
    page.wait_for_url(re.compile(r"/admin/login\?next="))
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Dashboard").wait_for()

    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Jobs").click()
    page.get_by_label("Search").fill("harbour.fan@example.com")
    page.get_by_label("Search").press("Enter")
    page.wait_for_url(re.compile(r"/admin/jobs\?q=harbour\.fan%40example\.com"))
    assert page.get_by_text("1 job match").is_visible()
    page.get_by_role("link", name=job.job_id[:8]).click()
    page.wait_for_url(re.compile(rf"/admin/jobs/{job.job_id}$"))

    page.get_by_role("link", name="Refund…").click()
    page.get_by_role("heading", name="Refund?").wait_for()
    page.get_by_label("Amount").fill("0.54")
    page.get_by_label("Reason").fill("Half back: the crop was not what they expected")
    page.get_by_role("button", name="Confirm: refund").click()

    page.wait_for_url(re.compile(rf"/admin/jobs/{job.job_id}$"))
    assert page.get_by_role("status").filter(has_text="Refunded 0.54 USD").is_visible()
    assert page.locator("#refunded").inner_text() == "$0.54"
    timeline = page.locator("#timeline")
    assert timeline.get_by_text("0.54 usd refunded in all (partial)").first.is_visible()
    # The charge.refunded webhook lands too, and shows on a fresh look at the page.
    assert stripe_local.wait_idle(15)
    page.reload()
    assert page.locator("#timeline").get_by_text("charge.refunded").is_visible()
    assert len(stripe_local.state.refunds) == 1
    refunded = fresh(job.job_id)
    assert (refunded.refund_amount, refunded.payment_status) == (Decimal("0.54"), "paid")
