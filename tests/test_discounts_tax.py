"""Discounts and tax through Stripe Checkout: what the session is opened with, which totals pay
for a job (and which are still refused), what a refund returns, the receipt's lines, and revenue
net of tax and refunds."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask

from devservers.smtp_sink import SinkHandler, html_of, text_of
from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.jobs.emails import build_message
from storefront.jobs.outcomes import fail_job
from storefront.jobs.refunds import RefundFailed, refund_job
from storefront.models import Job, utcnow
from storefront.reports.dashboard import revenue_by_day, top_sellers
from tests import admin_helpers
from tests.admin_helpers import fresh, text
from tests.conftest import LiveApp
from tests.factories import make_attachment, make_job
from tests.test_payment_integrity import (
    _buy,
    _events,
    _mails,
    _pay,
    _post_event,
    _send_queued_emails,
    _set,
    _upscale_queue,
)

admin_user = admin_helpers.admin_user
admin_client = admin_helpers.admin_client
PAID_SUBJECT = "Payment received: we're upscaling your image"


@pytest.fixture
def priced(app: Flask) -> Flask:
    """Prices of 10.00 (the minimum price), so that a 20 % code leaves more than Stripe's 0.50."""
    app.config["MIN_PRICE"] = Decimal("10.00")
    return app


def _flags(app: Flask, *, codes: bool = False, tax: bool = False) -> None:
    app.config.update(PROMOTION_CODES=codes, STRIPE_AUTOMATIC_TAX=tax)


def _completed_event(stripe_local: LocalStripe, job: Job, **changes: Any) -> dict[str, Any]:
    """A `checkout.session.completed` for the job's own session, with its totals changed."""
    session = dict(
        stripe_local.state.sessions[job.stripe_checkout_session_id or ""],
        payment_status="paid",
        status="complete",
        payment_intent="pi_tampered",
    )
    details = dict(session["total_details"])
    for name in ("amount_discount", "amount_tax"):
        if name in changes:
            details[name] = changes.pop(name)
    session.update(changes, total_details=details)
    return {
        "id": f"evt_{job.job_id[:8]}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {"object": session},
    }


# The session Stripe is asked for -------------------------------------------------------------


def test_checkout_opens_the_session_with_codes_and_tax_only_when_they_are_on(
    priced: Flask, stripe_local: LocalStripe
) -> None:
    plain = _buy(priced, priced.test_client())
    session = stripe_local.state.sessions[plain.stripe_checkout_session_id or ""]
    assert session["allow_promotion_codes"] is None
    assert session["automatic_tax"]["enabled"] is False
    assert (plain.promotion_codes_allowed, plain.automatic_tax) == (False, False)

    _flags(priced, codes=True, tax=True)
    job = _buy(priced, priced.test_client())
    session = stripe_local.state.sessions[job.stripe_checkout_session_id or ""]
    assert session["allow_promotion_codes"] is True
    assert session["automatic_tax"]["enabled"] is True
    (item,) = stripe_local.state.line_items[session["id"]]
    assert item["price"]["tax_behavior"] == "exclusive"
    assert (job.promotion_codes_allowed, job.automatic_tax) == (True, True)
    assert (job.amount_subtotal, job.amount_charged) == (Decimal("10.00"), Decimal("10.00"))


# What pays for a job --------------------------------------------------------------------------


def test_a_code_entered_at_stripe_pays_the_discounted_total_and_the_job_records_it(
    priced: Flask, live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    _flags(priced, codes=True)
    stripe_local.create_promotion_code("SAVE20", percent_off=20)
    buyer = priced.test_client()
    job = _buy(priced, buyer, email="buyer@example.com")
    stripe_local.apply_promotion_code(job.stripe_checkout_session_id or "", "SAVE20")
    paid = _pay(live_app, stripe_local, job)
    assert paid.payment_status == "paid"
    assert (paid.amount_subtotal, paid.amount_discount, paid.amount_tax, paid.amount_charged) == (
        Decimal("10.00"),
        Decimal("2.00"),
        Decimal("0.00"),
        Decimal("8.00"),
    )
    intent = stripe_local.state.payment_intents[paid.stripe_payment_intent_id or ""]
    assert intent["amount"] == 800
    (note,) = _events(job.job_id, "paid")
    assert note.message.startswith("8.00 usd (price 10.00, discount 2.00, tax 0.00)")
    # The buyer's order page shows the same breakdown.
    page = text(buyer.get(f"/orders/{job.job_id}"))
    assert "<dt>Price</dt><dd>$10.00</dd>" in page
    assert "<dt>Discount</dt><dd>−$2.00</dd>" in page
    assert "<dt>Total paid</dt><dd>$8.00</dd>" in page and "<dt>Tax</dt>" not in page


def test_tax_is_charged_on_top_and_a_full_refund_returns_what_was_charged(
    priced: Flask, live_app: LiveApp, stripe_local: LocalStripe, smtp_sink: SinkHandler
) -> None:
    _flags(priced, tax=True)
    stripe_local.set_tax_percent(19)
    job = _buy(priced, priced.test_client(), email="buyer@example.com")
    paid = _pay(live_app, stripe_local, job)
    assert (paid.amount_subtotal, paid.amount_discount, paid.amount_tax, paid.amount_charged) == (
        Decimal("10.00"),
        Decimal("0.00"),
        Decimal("1.90"),
        Decimal("11.90"),
    )
    _send_queued_emails(priced)
    (receipt,) = _mails(smtp_sink, PAID_SUBJECT)
    body = text_of(receipt)
    assert "Price: $10.00" in body and "Tax: $1.90" in body and "Total paid: $11.90" in body
    assert "Discount" not in body and "Discount" not in html_of(receipt)

    done = refund_job(paid, amount=None, reason="Goodwill", idempotency_key="full-refund")
    assert done.total == Decimal("11.90")
    (refund,) = stripe_local.state.refunds.values()
    assert refund["amount"] == 1190
    after = fresh(job.job_id)
    assert (after.payment_status, after.refund_amount) == ("refunded", Decimal("11.90"))


def test_a_tampered_total_is_refused_even_with_codes_and_tax_on(
    priced: Flask, live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    _flags(priced, codes=True, tax=True)
    job = _buy(priced, priced.test_client())
    # Says 2.00 off, but charged 5.00 less.
    event = _completed_event(stripe_local, job, amount_total=500, amount_discount=200)
    assert _post_event(live_app, event) == 200
    after = fresh(job.job_id)
    assert (after.status, after.payment_status) == ("awaiting_payment", "pending")
    assert "Stripe reports 500 usd, the job expects 800 usd" in (after.error_message or "")
    assert [e.kind for e in _events(job.job_id, "amount_mismatch")] == ["amount_mismatch"]
    assert _upscale_queue(priced) == []


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"amount_total": 800, "amount_discount": 200}, "promotion codes were off"),
        ({"amount_total": 1190, "amount_tax": 190}, "automatic tax was off"),
        ({"amount_subtotal": 500, "amount_total": 500}, "a subtotal of 500, not the price"),
        ({"amount_total": 1200, "amount_discount": -200}, "cannot be"),
    ],
    ids=["discount with codes off", "tax with tax off", "lower subtotal", "negative discount"],
)
def test_totals_that_add_up_are_still_refused_when_the_order_did_not_allow_them(
    priced: Flask, live_app: LiveApp, stripe_local: LocalStripe, changes: dict[str, int], why: str
) -> None:
    job = _buy(priced, priced.test_client())
    assert _post_event(live_app, _completed_event(stripe_local, job, **changes)) == 200
    after = fresh(job.job_id)
    assert (after.status, after.payment_status, after.amount_charged) == (
        "awaiting_payment",
        "pending",
        Decimal("10.00"),
    )
    assert why in (after.error_message or "")
    assert _upscale_queue(priced) == []


def test_a_code_that_makes_the_order_free_fulfils_it_with_nothing_to_refund(
    priced: Flask, live_app: LiveApp, stripe_local: LocalStripe, smtp_sink: SinkHandler
) -> None:
    _flags(priced, codes=True)
    stripe_local.create_promotion_code("FREE", percent_off=100)
    job = _buy(priced, priced.test_client(), email="buyer@example.com")
    stripe_local.apply_promotion_code(job.stripe_checkout_session_id or "", "FREE")
    paid = _pay(live_app, stripe_local, job)
    assert (paid.payment_status, paid.stripe_payment_intent_id) == ("paid", None)
    assert (paid.amount_discount, paid.amount_charged) == (Decimal("10.00"), Decimal("0.00"))
    assert _upscale_queue(priced) == [f"upscale-{job.job_id}"]
    with pytest.raises(RefundFailed, match="no Stripe payment"):
        refund_job(paid, amount=None, reason="x", idempotency_key="free")

    # Failed: the buyer is told that nothing was charged, and no refund is attempted.
    _set(job.job_id, status="processing")
    assert fail_job(job.job_id, "the upscaler broke") is True
    assert stripe_local.state.refunds == {}
    _send_queued_emails(priced)
    (failed,) = _mails(smtp_sink, "We couldn't process your image")
    assert "Nothing was charged for this order." in text_of(failed)
    assert "refunded" not in str(failed["Subject"])
    (receipt,) = _mails(smtp_sink, PAID_SUBJECT)
    assert "Discount: -$10.00" in text_of(receipt) and "Total paid: $0.00" in text_of(receipt)


# The receipt ---------------------------------------------------------------------------------


def test_the_receipt_shows_price_discount_tax_and_total_only_when_there_is_a_difference(
    app: Flask,
) -> None:
    attachment = make_attachment(app)
    full = make_job(attachment, status="pending", payment_status="paid")
    reduced = make_job(
        attachment,
        status="pending",
        payment_status="paid",
        amount_subtotal=Decimal("10.00"),
        amount_discount=Decimal("2.00"),
        amount_tax=Decimal("1.52"),
        amount_charged=Decimal("9.52"),
    )
    db.session.commit()
    plain = str(build_message("paid", full).body)
    assert "Price:" not in plain and "Discount" not in plain and "Tax" not in plain
    message = build_message("paid", reduced)
    lines = [line.strip() for line in message.body.splitlines()]
    assert lines[lines.index("Price: $10.00") :][:4] == [
        "Price: $10.00",
        "Discount: -$2.00",
        "Tax: $1.52",
        "Total paid: $9.52",
    ]
    assert message.html is not None
    for shown in ("Price", "Discount", "−$2.00", "Tax", "$1.52", "Total paid", "$9.52"):
        assert shown in message.html


# Revenue -------------------------------------------------------------------------------------


def test_revenue_is_net_of_tax_and_refunds_with_refunds_returning_tax_pro_rata(
    app: Flask,
) -> None:
    attachment = make_attachment(app)
    today = utcnow().replace(hour=12)

    def sold(**values: Any) -> Job:
        return make_job(attachment, status="completed", created_at=today, **values)

    sold(payment_status="paid", amount_charged=Decimal("11.90"), amount_tax=Decimal("1.90"))
    # Half refunded: half its tax goes back with it.
    sold(
        payment_status="paid",
        amount_charged=Decimal("11.90"),
        amount_tax=Decimal("1.90"),
        refund_amount=Decimal("5.95"),
    )
    # Refunded in full: no revenue, no tax kept.
    sold(
        payment_status="refunded",
        amount_charged=Decimal("11.90"),
        amount_tax=Decimal("1.90"),
        refund_amount=Decimal("11.90"),
    )
    sold(payment_status="paid", amount_charged=Decimal("8.00"), amount_discount=Decimal("2.00"))
    sold(payment_status="paid", amount_charged=Decimal("0.00"), amount_discount=Decimal("10.00"))
    db.session.commit()

    (day,) = revenue_by_day(today - dt.timedelta(days=1), today + dt.timedelta(days=1))
    assert (day.jobs, day.charged, day.refunded, day.tax) == (
        5,
        Decimal("43.70"),
        Decimal("17.85"),
        Decimal("2.85"),
    )
    assert day.revenue == Decimal("10.00") + Decimal("5.00") + Decimal("0.00") + Decimal("8.00")
    _posts, (image,) = top_sellers(today - dt.timedelta(days=1), today + dt.timedelta(days=1))
    assert image.revenue == Decimal("23.00")


def test_the_admin_job_page_shows_price_discount_and_tax_of_a_discounted_order(
    app: Flask, admin_client: Any
) -> None:
    image = make_attachment(app, width=1000, height=750)
    discounted = make_job(
        image,
        status="completed",
        payment_status="paid",
        amount_subtotal=Decimal("10.00"),
        amount_discount=Decimal("2.00"),
        amount_tax=Decimal("1.52"),
        amount_charged=Decimal("9.52"),
    )
    plain = make_job(image, status="completed", payment_status="paid")
    db.session.commit()

    page = text(admin_client.get(f"/admin/jobs/{discounted.job_id}"))
    assert '<dt>Price</dt><dd id="price">$10.00</dd>' in page
    assert '<dt>Discount</dt><dd id="discount">−$2.00</dd>' in page
    assert '<dt>Tax</dt><dd id="tax">$1.52</dd>' in page
    assert '<dt>Charged</dt><dd id="charged">$9.52</dd>' in page
    page = text(admin_client.get(f"/admin/jobs/{plain.job_id}"))
    assert 'id="charged"' in page
    assert 'id="price"' not in page and 'id="discount"' not in page and 'id="tax"' not in page
