"""Payment and refund integrity: only the job's own session pays it, refund totals never go down
and are never lost, the buyer hears of each refund once, and the order page spares Stripe."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from decimal import Decimal
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker
from sqlalchemy import func, select

from devservers.smtp_sink import SinkHandler, html_of, text_of
from devservers.stripe_local import LocalStripe, sign
from storefront.extensions import db
from storefront.jobs.outcomes import fail_job
from storefront.jobs.recovery import sweep
from storefront.jobs.refunds import apply_refund_total
from storefront.jobs.stripe_api import stripe_client
from storefront.models import Job, JobEvent, StripeEvent, utcnow
from tests import admin_helpers
from tests.admin_helpers import fresh, request_id, text
from tests.conftest import LiveApp, wait_until
from tests.factories import make_attachment, make_job
from worker.context import use_app

admin_user = admin_helpers.admin_user

SECRET = "whsec_test_secret"
REFUNDED_SUBJECT = "We've refunded your order"


# Helpers ------------------------------------------------------------------------------------


def _buy(
    app: Flask, client: FlaskClient, email: str = "", width: int = 200, height: int = 150
) -> Job:
    """Press Buy on a fresh image; the job, awaiting payment with its Checkout Session."""
    attachment = make_attachment(app, width=width, height=height)
    db.session.commit()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": email}
    assert client.post("/checkout", data=data).status_code == 303
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
    assert job is not None and job.stripe_checkout_session_id
    return job


def _set(job_id: str, **values: Any) -> None:
    db.session.execute(Job.__table__.update().where(Job.job_id == job_id).values(**values))
    db.session.commit()


def _stale(job_id: str) -> Job:
    """The job as read now, kept as it is whatever happens to its row afterwards."""
    job = fresh(job_id)
    db.session.expunge(job)
    return job


def _events(job_id: str, kind: str) -> list[JobEvent]:
    db.session.expire_all()
    return list(
        db.session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind))
    )


def _stored(event_type: str) -> int:
    db.session.expire_all()
    return db.session.scalar(
        select(func.count(StripeEvent.id)).where(StripeEvent.type == event_type)
    )


def _upscale_queue(app: Flask) -> list[str]:
    return Queue("upscale", connection=Redis.from_url(app.config["REDIS_URL"])).job_ids


def _post_event(live: LiveApp, event: dict[str, Any]) -> int:
    payload = json.dumps(event)
    return requests.post(
        f"{live.url}/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": sign(payload, SECRET), "Content-Type": "application/json"},
        timeout=10,
    ).status_code


def _other_session(app: Flask, job: Job, *, claim: str, amount: int = 50) -> dict[str, Any]:
    """A Checkout Session at the job's price that is not the job's, but names it, as a Payment
    Link with `?client_reference_id=<job id>` does (or a merchant's mistake in metadata)."""
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": amount,
                    "product_data": {"name": "Something else"},
                },
            }
        ],
        "success_url": "http://elsewhere.test/thanks",
    }
    if claim == "client_reference_id":
        params["client_reference_id"] = job.job_id
    else:
        params["metadata"] = {"job_id": job.job_id}
        params["payment_intent_data"] = {"metadata": {"job_id": job.job_id}}
    return stripe_client(app).v1.checkout.sessions.create(params).to_dict()  # type: ignore[arg-type]


def _deliveries_ok(stripe_local: LocalStripe, event_type: str) -> list[bool]:
    assert stripe_local.wait_idle(15)
    return [d["ok"] for d in stripe_local.deliveries(event_type)]


def _pay(live: LiveApp, stripe_local: LocalStripe, job: Job, **pay_args: Any) -> Job:
    stripe_local.pay(job.stripe_checkout_session_id or "", **pay_args)
    assert stripe_local.wait_idle(15)
    return wait_until(lambda: (j := fresh(job.job_id)).status == "pending" and j)


def _send_queued_emails(app: Flask) -> None:
    """Run every queued email with a real RQ worker in this process, into the SMTP sink."""
    connection = Redis.from_url(app.config["REDIS_URL"])
    use_app(app)
    try:
        SimpleWorker([Queue("default", connection=connection)], connection=connection).work(
            burst=True
        )
    finally:
        use_app(None)


def _mails(sink: SinkHandler, subject: str) -> list[Any]:
    return [m for m in sink.messages if subject in str(m["Subject"])]


# Finding 7: a session is trusted only if it is the job's own ---------------------------------


@pytest.mark.parametrize("claim", ["client_reference_id", "metadata"])
def test_a_paid_session_that_is_not_the_jobs_own_never_pays_it(
    live_app: LiveApp, stripe_local: LocalStripe, claim: str
) -> None:
    job = _buy(live_app.app, live_app.app.test_client())
    other = _other_session(live_app.app, job, claim=claim)
    paid = stripe_local.pay(other["id"])
    # Acknowledged (2xx), so Stripe does not retry it for days; applied to nothing.
    assert _deliveries_ok(stripe_local, "checkout.session.completed") == [True]
    again = fresh(job.job_id)
    assert (again.status, again.payment_status) == ("awaiting_payment", "pending")
    assert again.stripe_payment_intent_id is None
    assert again.stripe_checkout_session_id == job.stripe_checkout_session_id
    assert _upscale_queue(live_app.app) == []
    # The owner sees it on the job's timeline, with what is needed to refund it.
    (note,) = _events(job.job_id, "foreign_session")
    assert other["id"] in note.message and paid["payment_intent"] in note.message
    assert "0.50 usd" in note.message and "refund" in note.message


def test_the_order_page_does_not_pay_a_job_with_another_session(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    job = _buy(app, client)  # this browser owns the order (cookie)
    other = _other_session(app, job, claim="client_reference_id")
    stripe_local.pay(other["id"])
    page = client.get(f"/orders/{job.job_id}?session_id={other['id']}", follow_redirects=True)
    assert page.status_code == 200
    assert "Confirming your payment" in page.get_data(as_text=True)
    assert fresh(job.job_id).status == "awaiting_payment"
    assert _upscale_queue(app) == []


def test_an_expired_session_that_is_not_the_jobs_own_does_not_close_it(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _buy(live_app.app, live_app.app.test_client())
    other = _other_session(live_app.app, job, claim="client_reference_id")
    stripe_local.expire(other["id"])
    assert _deliveries_ok(stripe_local, "checkout.session.expired") == [True]
    assert fresh(job.job_id).status == "awaiting_payment"
    # The job's own session still pays it.
    assert _pay(live_app, stripe_local, job).payment_status == "paid"


@pytest.mark.parametrize("later", ["order page", "sweeper"])
def test_a_session_completed_before_its_id_was_stored_pays_once_the_id_is_recorded(
    live_app: LiveApp, stripe_local: LocalStripe, later: str
) -> None:
    """The rule: a session pays a job only when it is the job's recorded session; none yet is no
    match. The webhook is acknowledged and noted; the order page and the sweeper, which ask
    Stripe about the recorded session, apply it once create_checkout has stored the id."""
    job = _buy(live_app.app, live_app.app.test_client())
    session_id = job.stripe_checkout_session_id or ""
    _set(job.job_id, stripe_checkout_session_id=None)  # Stripe answered; not stored yet
    stripe_local.pay(session_id)
    assert _deliveries_ok(stripe_local, "checkout.session.completed") == [True]
    assert fresh(job.job_id).status == "awaiting_payment"
    (note,) = _events(job.job_id, "foreign_session")
    assert session_id in note.message and "no session recorded yet" in note.message

    _set(job.job_id, stripe_checkout_session_id=session_id)  # create_checkout stores it
    if later == "order page":
        buyer = live_app.app.test_client()  # back from Stripe, without the cookie
        page = buyer.get(f"/orders/{job.job_id}?session_id={session_id}", follow_redirects=True)
        assert "Paid: in the queue" in page.get_data(as_text=True)
    else:
        report = sweep(now=utcnow() + dt.timedelta(hours=2))  # past the checkout's expiry
        assert report.fulfilled == [job.job_id]
    paid = fresh(job.job_id)
    assert (paid.status, paid.payment_status) == ("pending", "paid")
    assert _upscale_queue(live_app.app) == [f"upscale-{job.job_id}"]


# Finding 8: refund bookkeeping --------------------------------------------------------------


def test_refund_total_never_goes_down_when_events_arrive_out_of_order(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _buy(live_app.app, live_app.app.test_client(), width=2000, height=2000)  # 1.92
    paid = _pay(live_app, stripe_local, job)
    client = stripe_client(live_app.app)
    client.v1.refunds.create({"payment_intent": paid.stripe_payment_intent_id, "amount": 92})
    assert stripe_local.wait_idle(15)
    client.v1.refunds.create({"payment_intent": paid.stripe_payment_intent_id})
    assert stripe_local.wait_idle(15)
    assert fresh(job.job_id).payment_status == "refunded"
    # The first refund's event again (Stripe does not promise an order): 0.92 refunded in all.
    first = stripe_local.events("charge.refunded")[0]
    assert first["data"]["object"]["amount_refunded"] == 92
    assert _post_event(live_app, dict(first, id="evt_late_partial_refund")) == 200
    after = fresh(job.job_id)
    assert (after.refund_amount, after.payment_status) == (Decimal("1.92"), "refunded")
    assert after.download_token is None
    messages = [e.message for e in _events(job.job_id, "refunded")]
    assert messages == [
        "0.92 usd refunded in all (partial)",
        "1.92 usd refunded in all (full)",
    ]


def test_a_refund_that_arrives_before_the_payment_is_recorded_is_applied(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _buy(live_app.app, live_app.app.test_client())
    stripe_local.set_webhook(None, None)
    session = stripe_local.pay(job.stripe_checkout_session_id or "")  # its event is lost
    assert stripe_local.wait_idle(15)
    stripe_local.set_webhook(f"{live_app.url}/webhooks/stripe", SECRET)
    assert fresh(job.job_id).stripe_payment_intent_id is None
    stripe_client(live_app.app).v1.refunds.create(
        {"payment_intent": session["payment_intent"], "amount": 20}
    )
    assert _deliveries_ok(stripe_local, "charge.refunded") == [True]
    assert _stored("charge.refunded") == 1
    after = fresh(job.job_id)
    assert after.stripe_payment_intent_id == session["payment_intent"]
    assert (after.status, after.payment_status) == ("pending", "paid")
    assert after.refund_amount == Decimal("0.20") and after.refunded_at is not None
    assert [e.message for e in _events(job.job_id, "refunded")] == [
        "0.20 usd refunded in all (partial)"
    ]


def test_a_refund_before_its_payment_waits_for_stripe_when_stripe_is_down(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _buy(live_app.app, live_app.app.test_client())
    stripe_local.set_webhook(None, None)
    session = stripe_local.pay(job.stripe_checkout_session_id or "")  # its event is lost
    assert stripe_local.wait_idle(15)
    stripe_local.set_webhook(f"{live_app.url}/webhooks/stripe", SECRET)
    # Applying the refund needs the PaymentIntent from Stripe, which fails for a while (the SDK
    # tries three times): the webhook says "later" (503), stores nothing, and Stripe retries.
    stripe_local.fail_next(500, count=3, path="/v1/payment_intents")
    stripe_client(live_app.app).v1.refunds.create(
        {"payment_intent": session["payment_intent"], "amount": 20}
    )
    assert stripe_local.wait_idle(15)
    statuses = [d["status"] for d in stripe_local.deliveries("charge.refunded")]
    assert statuses[0] == 503 and statuses[-1] == 200
    assert _stored("charge.refunded") == 1
    after = fresh(job.job_id)
    assert (after.payment_status, after.refund_amount) == ("paid", Decimal("0.20"))


def test_a_refund_of_a_payment_that_never_paid_the_job_leaves_it_alone(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _buy(live_app.app, live_app.app.test_client())
    other = _other_session(live_app.app, job, claim="metadata")
    paid = stripe_local.pay(other["id"])
    assert stripe_local.wait_idle(15)
    stripe_client(live_app.app).v1.refunds.create({"payment_intent": paid["payment_intent"]})
    assert _deliveries_ok(stripe_local, "charge.refunded") == [True]
    after = fresh(job.job_id)
    assert (after.status, after.payment_status, after.refund_amount) == (
        "awaiting_payment",
        "pending",
        None,
    )
    (note,) = _events(job.job_id, "foreign_refund")
    assert paid["payment_intent"] in note.message and "0.50 usd" in note.message


def test_apply_refund_total_reports_what_really_happened(app: Flask) -> None:
    job = make_job(
        make_attachment(app),
        status="pending",
        payment_status="paid",
        amount_charged=Decimal("1.92"),
        stripe_payment_intent_id="pi_test_1",
    )
    db.session.commit()
    stale = _stale(job.job_id)
    _set(job.job_id, status="processing")  # a worker took it meanwhile
    assert apply_refund_total(stale, Decimal("0.50"), "goodwill") is True
    db.session.commit()
    assert fresh(job.job_id).refund_amount == Decimal("0.50")
    # The other side (the webhook, or the admin's request) records 1.92 meanwhile.
    stale = _stale(job.job_id)
    assert apply_refund_total(_stale(job.job_id), Decimal("1.92"), "all") is True
    db.session.commit()
    assert apply_refund_total(stale, Decimal("1.92"), "all") is False
    db.session.commit()
    after = fresh(job.job_id)
    assert (after.refund_amount, after.payment_status) == (Decimal("1.92"), "refunded")
    assert [e.message for e in _events(job.job_id, "refunded")] == [
        "0.50 usd refunded in all (partial)",
        "1.92 usd refunded in all (full)",
    ]


# Finding 11: the buyer hears of each refund, once -------------------------------------------


def test_refunds_from_the_admin_page_email_the_buyer_once_each(
    live_app: LiveApp, stripe_local: LocalStripe, smtp_sink: SinkHandler, admin_user: object
) -> None:
    job = _buy(
        live_app.app, live_app.app.test_client(), email="buyer@example.com", width=1500, height=1500
    )
    _pay(live_app, stripe_local, job)  # 1.08
    admin = live_app.app.test_client()
    admin_helpers.sign_in(admin)

    def refund(amount: str, reason: str) -> None:
        page = admin.get(f"/admin/jobs/{job.job_id}/actions/refund")
        data = {"request_id": request_id(text(page)), "amount": amount, "reason": reason}
        assert admin.post(f"/admin/jobs/{job.job_id}/actions/refund", data=data).status_code == 303
        # Stripe's charge.refunded webhook records the same refund too.
        assert stripe_local.wait_idle(15)

    refund("0.54", "Colours were off")
    assert _stored("charge.refunded") == 1
    _send_queued_emails(live_app.app)
    (partial,) = _mails(smtp_sink, REFUNDED_SUBJECT)
    assert partial["To"] == "buyer@example.com"
    body = text_of(partial)
    assert "$0.54" in body and "$1.08" in body and "partial refund" in body
    assert "still being upscaled" in body
    assert "$0.54" in html_of(partial) and "partial refund" in html_of(partial)

    refund("", "Goodwill")
    assert _stored("charge.refunded") == 2
    _send_queued_emails(live_app.app)
    first, full = _mails(smtp_sink, REFUNDED_SUBJECT)
    assert first is partial
    body = text_of(full)
    assert "$1.08" in body and "in full" in body and "no download link" in body
    assert "in full" in html_of(full)


def test_a_refund_made_in_stripes_dashboard_emails_the_buyer_once(
    live_app: LiveApp, stripe_local: LocalStripe, smtp_sink: SinkHandler
) -> None:
    job = _buy(live_app.app, live_app.app.test_client(), email="buyer@example.com")
    paid = _pay(live_app, stripe_local, job)
    refund = stripe_client(live_app.app).v1.refunds.create(
        {"payment_intent": paid.stripe_payment_intent_id}
    )
    assert refund.amount == 50
    assert _deliveries_ok(stripe_local, "charge.refunded") == [True]
    # The same event delivered again changes nothing and sends nothing.
    (refunded_event,) = stripe_local.events("charge.refunded")
    stripe_local.resend(refunded_event["id"])
    assert _deliveries_ok(stripe_local, "charge.refunded") == [True, True]
    _send_queued_emails(live_app.app)
    (mail,) = _mails(smtp_sink, REFUNDED_SUBJECT)
    assert mail["To"] == "buyer@example.com"
    assert "$0.50" in text_of(mail) and "in full" in text_of(mail)
    assert [e.kind for e in _events(job.job_id, "email_refunded")] == ["email_refunded"]


def test_a_failed_jobs_refund_sends_the_failed_email_only(
    live_app: LiveApp, stripe_local: LocalStripe, smtp_sink: SinkHandler
) -> None:
    job = _buy(live_app.app, live_app.app.test_client(), email="buyer@example.com")
    _pay(live_app, stripe_local, job)
    _set(job.job_id, status="processing")
    assert fail_job(job.job_id, "the upscaler broke") is True
    assert _deliveries_ok(stripe_local, "charge.refunded") == [True]
    assert fresh(job.job_id).payment_status == "refunded"
    _send_queued_emails(live_app.app)
    buyer = [m for m in smtp_sink.messages if m["To"] == "buyer@example.com"]
    subjects = sorted(str(m["Subject"]) for m in buyer)
    assert subjects == [
        "Payment received: we're upscaling your image",
        "We couldn't process your image: you have been refunded",
    ]


def test_a_failed_job_refunded_in_stripe_after_its_own_refund_failed_gets_the_failed_email(
    live_app: LiveApp, stripe_local: LocalStripe, smtp_sink: SinkHandler
) -> None:
    job = _buy(live_app.app, live_app.app.test_client(), email="buyer@example.com")
    paid = _pay(live_app, stripe_local, job)
    _set(job.job_id, status="processing")
    stripe_local.fail_next(500, count=3, path="/v1/refunds")  # the SDK retries twice
    assert fail_job(job.job_id, "the upscaler broke") is True
    assert fresh(job.job_id).refunded_at is None
    # The owner refunds it in Stripe's dashboard.
    stripe_client(live_app.app).v1.refunds.create({"payment_intent": paid.stripe_payment_intent_id})
    assert _deliveries_ok(stripe_local, "charge.refunded") == [True]
    _send_queued_emails(live_app.app)
    subjects = [str(m["Subject"]) for m in smtp_sink.messages if m["To"] == "buyer@example.com"]
    assert sorted(subjects) == [
        "Payment received: we're upscaling your image",
        "We couldn't process your image: you have been refunded",
    ]


# Finding 3 (part): the order page asks Stripe at most once per 10 seconds -------------------


def _session_lookups(caplog: pytest.LogCaptureFixture, session_id: str) -> int:
    prefix = f"GET /v1/checkout/sessions/{session_id} "
    return sum(1 for r in caplog.records if r.getMessage().startswith(prefix))


def test_the_order_page_asks_stripe_about_an_unpaid_session_once_per_10_seconds(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devservers.stripe_local")
    job = _buy(app, client)
    session_id = job.stripe_checkout_session_id or ""
    url = f"/orders/{job.job_id}?session_id={session_id}"
    for _ in range(5):
        page = client.get(url, follow_redirects=True)
        assert page.status_code == 200
        assert "Confirming your payment" in page.get_data(as_text=True)
    assert _session_lookups(caplog, session_id) == 1
    redis = Redis.from_url(app.config["REDIS_URL"])
    (key,) = redis.keys("*stripe-check*")
    assert 0 < redis.ttl(key) <= 10

    stripe_local.pay(session_id)  # no webhook URL: none arrives
    assert "Confirming your payment" in client.get(url, follow_redirects=True).get_data(
        as_text=True
    )
    redis.delete(key)  # ten seconds later
    assert "Paid: in the queue" in client.get(url, follow_redirects=True).get_data(as_text=True)
    assert _session_lookups(caplog, session_id) == 2
    # Paid: nothing more to ask.
    redis.delete(key)
    client.get(url, follow_redirects=True)
    assert _session_lookups(caplog, session_id) == 2


def test_the_order_page_still_asks_stripe_when_redis_is_down(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe, tmp_path: Any
) -> None:
    job = _buy(app, client)
    stripe_local.pay(job.stripe_checkout_session_id or "")
    # Redis goes away: the app's client now points at a socket nobody listens on.
    app.extensions["smi_redis"] = Redis.from_url(
        f"unix://{tmp_path / 'gone.sock'}", socket_connect_timeout=0.2
    )
    started = time.monotonic()
    url = f"/orders/{job.job_id}?session_id={job.stripe_checkout_session_id}"
    page = client.get(url, follow_redirects=True)
    assert page.status_code == 200
    assert "Paid: in the queue" in page.get_data(as_text=True)
    assert time.monotonic() - started < 5
    assert fresh(job.job_id).payment_status == "paid"
