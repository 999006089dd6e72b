"""The Buy button: validation, the job row, and the Checkout Session through the real SDK."""

from __future__ import annotations

import re
import time
from decimal import Decimal

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from devservers.stripe_local import LocalStripe
from storefront import create_app, funnel
from storefront.extensions import db
from storefront.models import FunnelEvent, Job
from storefront.queues import redis_connection
from tests.factories import make_attachment

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"}


def _jobs() -> int:
    return db.session.scalar(select(func.count(Job.id))) or 0


def test_buy_creates_job_and_session_and_redirects_to_stripe(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app, width=2000, height=2000, title="Lighthouse")
    db.session.commit()
    response = client.post(
        "/checkout",
        data={"attachment_id": attachment.id, "resolution": "8x", "email": " Buyer@Example.com "},
        headers=BROWSER,
    )
    assert response.status_code == 303
    job = db.session.scalars(select(Job)).one()
    session = stripe_local.state.sessions[job.stripe_checkout_session_id]
    assert response.headers["Location"] == session["url"]
    assert (job.status, job.payment_status, job.resolution) == ("awaiting_payment", "pending", "8x")
    assert (job.amount_charged, job.amount_cost, job.credits_used) == (
        Decimal("7.68"),
        Decimal("2.56"),
        64,
    )
    assert (job.image_width, job.image_height, job.email) == (2000, 2000, "Buyer@Example.com")
    assert re.fullmatch(r"[0-9a-f-]{36}", job.job_id)
    assert session["amount_total"] == 768 and session["currency"] == "usd"
    assert session["client_reference_id"] == job.job_id
    assert session["metadata"] == {"job_id": job.job_id}
    assert session["customer_email"] == "Buyer@Example.com"
    assert session["success_url"] == (
        f"http://shop.test/orders/{job.job_id}?session_id={{CHECKOUT_SESSION_ID}}"
    )
    assert session["cancel_url"] == f"http://shop.test/images/{attachment.id}?cancelled=1"
    (item,) = stripe_local.state.line_items[session["id"]]
    assert item["description"] == "Lighthouse: 8x upscale, 16000 × 16000 px"
    assert abs(session["expires_at"] - (time.time() + 3600)) < 60
    assert any(f"checkout-{job.job_id}" in key for key in stripe_local.state.idempotency)
    kinds = db.session.scalars(select(FunnelEvent.kind)).all()
    assert kinds == ["checkout_started"]


def test_line_item_and_payment_intent_carry_what_stripe_shows(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app, width=300, height=200, title="Harbour")
    db.session.commit()
    client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x"})
    job = db.session.scalars(select(Job)).one()
    session_id = job.stripe_checkout_session_id
    (item,) = stripe_local.state.line_items[session_id]
    assert item["description"] == "Harbour: 4x upscale, 1200 × 800 px"
    assert (item["quantity"], item["amount_total"], item["currency"]) == (1, 50, "usd")
    session = stripe_local.pay(session_id)
    intent = stripe_local.state.payment_intents[session["payment_intent"]]
    assert intent["metadata"] == {"job_id": job.job_id}
    assert intent["amount"] == 50


def test_email_may_be_left_blank(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    response = client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x"})
    assert response.status_code == 303
    job = db.session.scalars(select(Job)).one()
    assert job.email == ""
    assert stripe_local.state.sessions[job.stripe_checkout_session_id]["customer_email"] is None


def test_bad_email_shows_the_image_page_again_and_creates_nothing(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    response = client.post(
        "/checkout",
        data={"attachment_id": attachment.id, "resolution": "4x", "email": "not-an-email"},
    )
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "look like an email address" in html and 'aria-invalid="true"' in html
    assert _jobs() == 0 and stripe_local.state.sessions == {}


def test_unknown_resolution_is_refused(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    response = client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "16x"})
    assert response.status_code == 400
    assert "Not a valid choice" in response.get_data(as_text=True)
    assert _jobs() == 0


def test_unknown_image_is_refused(client: FlaskClient, stripe_local: LocalStripe) -> None:
    for value in ("999999", "abc", ""):
        response = client.post("/checkout", data={"attachment_id": value, "resolution": "4x"})
        assert response.status_code == 400
        assert "isn&#39;t in the catalog" in response.get_data(as_text=True)
    assert _jobs() == 0


def test_image_not_for_sale_is_refused(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app, for_sale=False)
    db.session.commit()
    response = client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x"})
    assert response.status_code == 400
    assert "not for sale" in response.get_data(as_text=True)
    assert _jobs() == 0


def test_tier_over_the_largest_output_is_refused(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    app.config["MAX_OUTPUT_MEGAPIXELS"] = 1
    attachment = make_attachment(app, width=400, height=300)
    db.session.commit()
    response = client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "8x"})
    assert response.status_code == 400
    assert "more than the 1 megapixels" in response.get_data(as_text=True)
    assert _jobs() == 0


def test_money_in_the_form_is_ignored(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app, width=2000, height=2000)
    db.session.commit()
    client.post(
        "/checkout",
        data={"attachment_id": attachment.id, "resolution": "4x", "price": "0.01", "amount": "1"},
    )
    job = db.session.scalars(select(Job)).one()
    assert job.amount_charged == Decimal("1.92")
    assert stripe_local.state.sessions[job.stripe_checkout_session_id]["amount_total"] == 192


def test_missing_csrf_token_is_a_400_and_changes_nothing(app_config: dict) -> None:
    app_config["WTF_CSRF_ENABLED"] = True
    app = create_app(app_config)
    with app.app_context():
        attachment = make_attachment(app)
        db.session.commit()
        before = _jobs()
        response = app.test_client().post(
            "/checkout", data={"attachment_id": attachment.id, "resolution": "4x"}
        )
        assert response.status_code == 400
        assert "form had expired" in response.get_data(as_text=True)
        assert _jobs() == before
        db.session.remove()
        db.engine.dispose()


def test_stripe_down_gives_a_friendly_page_and_closes_the_job(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    stripe_local.fail_next(status=500, count=10)
    response = client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x"})
    assert response.status_code == 503
    assert "nothing was charged" in response.get_data(as_text=True)
    job = db.session.scalars(select(Job)).one()
    assert job.status == "abandoned"
    assert "Checkout could not start" in (job.error_message or "")


def test_stripe_refusing_gives_a_friendly_page(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    app.config["STRIPE_SECRET_KEY"] = "pk_wrong_kind_of_key"
    attachment = make_attachment(app)
    db.session.commit()
    response = client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x"})
    assert response.status_code == 503
    assert db.session.scalars(select(Job)).one().status == "abandoned"


def test_image_page_view_is_counted_for_people_not_bots(app: Flask, client: FlaskClient) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    client.get(f"/images/{attachment.id}", headers=BROWSER)
    client.get(f"/images/{attachment.id}", headers={"User-Agent": "Googlebot/2.1"})
    client.get(f"/images/{attachment.id}", headers={"User-Agent": ""})
    # Buffered in Redis by the page view, written by the sweeper (tests/test_page_caches.py).
    assert db.session.scalars(select(FunnelEvent)).all() == []
    assert funnel.fold_buffered_views(redis_connection(app)) == 1
    events = db.session.scalars(select(FunnelEvent)).all()
    assert [(e.kind, e.attachment_id, e.post_id) for e in events] == [
        ("image_viewed", attachment.id, attachment.post_id)
    ]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    width=st.integers(10, 3000),
    height=st.integers(10, 3000),
    markup=st.decimals(min_value=Decimal(0), max_value=Decimal(1200), places=1),
    cost_per_credit=st.decimals(min_value=Decimal("0.001"), max_value=Decimal("1"), places=3),
)
def test_shown_price_unit_amount_and_amount_charged_agree(
    app: Flask,
    client: FlaskClient,
    stripe_local: LocalStripe,
    width: int,
    height: int,
    markup: Decimal,
    cost_per_credit: Decimal,
) -> None:
    app.config.update(MARKUP_PERCENT=markup, COST_PER_CREDIT=cost_per_credit)
    app.config["MAX_OUTPUT_MEGAPIXELS"] = 2000
    # Every example buys from the same client address: more than CHECKOUT_RATE_LIMIT allows.
    app.config["CHECKOUT_RATE_LIMIT"] = "1000/minute"
    attachment = make_attachment(app, width=width, height=height)
    db.session.commit()
    page = client.get(f"/images/{attachment.id}").get_data(as_text=True)
    shown = re.search(r'offer-price">\$([\d,]+\.\d\d)<', page)
    assert shown is not None
    client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x"})
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
    assert job is not None and job.attachment_id == attachment.id
    unit_amount = stripe_local.state.sessions[job.stripe_checkout_session_id]["amount_total"]
    assert Decimal(shown.group(1).replace(",", "")) == job.amount_charged
    assert unit_amount == int(job.amount_charged * 100)
