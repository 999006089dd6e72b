"""Stripe's webhooks, delivered by the local Stripe server to the app over HTTP, applied once."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
import requests
from flask import Flask
from redis import Redis
from rq import Queue
from sqlalchemy import event, func, select

from devservers.stripe_local import LocalStripe, sign
from storefront.extensions import db
from storefront.jobs.stripe_events import handle_event
from storefront.models import FunnelEvent, Job, JobEvent, StripeEvent
from tests.conftest import LiveApp, wait_until
from tests.factories import make_attachment, make_job

SECRET = "whsec_test_secret"


def _checkout(live: LiveApp, email: str = "", width: int = 200, height: int = 150) -> Job:
    attachment = make_attachment(live.app, width=width, height=height)
    db.session.commit()
    client = live.app.test_client()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": email}
    assert client.post("/checkout", data=data).status_code == 303
    return db.session.scalars(select(Job).order_by(Job.id.desc())).first()  # type: ignore[return-value]


def _fresh(job_id: str) -> Job:
    db.session.expire_all()
    job = db.session.scalars(select(Job).where(Job.job_id == job_id)).one()
    return job


def _upscale_queue(app: Flask) -> list[str]:
    return Queue("upscale", connection=Redis.from_url(app.config["REDIS_URL"])).job_ids


def _post_event(live: LiveApp, event: dict, *, secret: str = SECRET, **sign_args) -> int:
    payload = json.dumps(event)
    header = sign(payload, secret, **sign_args)
    return requests.post(
        f"{live.url}/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        timeout=10,
    ).status_code


def _pay_and_wait(live: LiveApp, stripe_local: LocalStripe, job: Job, **pay_args) -> Job:
    stripe_local.pay(job.stripe_checkout_session_id, **pay_args)
    assert stripe_local.wait_idle(15)
    return wait_until(lambda: (j := _fresh(job.job_id)).status == "pending" and j)


def test_paid_session_moves_job_to_pending_and_queues_it_once(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _checkout(live_app, email="")
    paid = _pay_and_wait(live_app, stripe_local, job, email="payer@example.com")
    assert paid.payment_status == "paid" and paid.paid_at is not None
    assert paid.stripe_payment_intent_id and paid.stripe_payment_intent_id.startswith("pi_")
    assert paid.email == "payer@example.com"  # backfilled from customer_details
    assert _upscale_queue(live_app.app) == [f"upscale-{job.job_id}"]
    (event,) = db.session.scalars(select(StripeEvent)).all()
    assert (event.type, event.job_id) == ("checkout.session.completed", job.job_id)
    funnel = db.session.scalars(select(FunnelEvent.kind)).all()
    assert funnel == ["checkout_started", "paid"]


def test_email_given_at_checkout_is_kept(live_app: LiveApp, stripe_local: LocalStripe) -> None:
    job = _checkout(live_app, email="first@example.com")
    assert _pay_and_wait(live_app, stripe_local, job).email == "first@example.com"


def test_same_event_twice_changes_nothing_more(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _checkout(live_app)
    paid = _pay_and_wait(live_app, stripe_local, job)
    (event,) = stripe_local.events("checkout.session.completed")
    stripe_local.resend(event["id"])
    assert stripe_local.wait_idle(15)
    deliveries = [d for d in stripe_local.deliveries("checkout.session.completed") if d["ok"]]
    assert len(deliveries) == 2
    again = _fresh(job.job_id)
    assert (again.status, again.paid_at, again.updated_at) == (
        "pending",
        paid.paid_at,
        paid.updated_at,
    )
    assert _upscale_queue(live_app.app) == [f"upscale-{job.job_id}"]
    assert db.session.scalar(select(func.count(StripeEvent.id))) == 1
    assert (
        db.session.scalar(select(func.count(FunnelEvent.id)).where(FunnelEvent.kind == "paid")) == 1
    )


def test_a_second_event_for_the_same_session_changes_nothing(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _checkout(live_app)
    paid = _pay_and_wait(live_app, stripe_local, job)
    session = dict(stripe_local.state.sessions[job.stripe_checkout_session_id])
    event = {
        "id": "evt_async_succeeded_1",
        "object": "event",
        "type": "checkout.session.async_payment_succeeded",
        "created": int(time.time()),
        "data": {"object": session},
    }
    assert _post_event(live_app, event) == 200
    again = _fresh(job.job_id)
    assert (again.status, again.paid_at) == ("pending", paid.paid_at)
    assert _upscale_queue(live_app.app) == [f"upscale-{job.job_id}"]
    assert db.session.scalar(select(func.count(StripeEvent.id))) == 2


def test_events_out_of_order_leave_a_paid_job_paid(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _checkout(live_app)
    _pay_and_wait(live_app, stripe_local, job)
    session = dict(stripe_local.state.sessions[job.stripe_checkout_session_id], status="expired")
    event = {
        "id": "evt_late_expired",
        "object": "event",
        "type": "checkout.session.expired",
        "created": int(time.time()) - 600,
        "data": {"object": session},
    }
    assert _post_event(live_app, event) == 200
    assert _fresh(job.job_id).status == "pending"


def test_payment_after_abandonment_is_still_fulfilled(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _checkout(live_app)
    db.session.execute(
        Job.__table__.update().where(Job.job_id == job.job_id).values(status="abandoned")
    )
    db.session.commit()
    assert _pay_and_wait(live_app, stripe_local, job).payment_status == "paid"


@pytest.mark.parametrize("tamper", ["bad_signature", "stale_timestamp", "tampered_body", "none"])
def test_unverifiable_deliveries_get_400_and_change_nothing(
    live_app: LiveApp, stripe_local: LocalStripe, tamper: str
) -> None:
    job = _checkout(live_app)
    session = dict(
        stripe_local.state.sessions[job.stripe_checkout_session_id],
        payment_status="paid",
        status="complete",
    )
    event = {
        "id": "evt_forged",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {"object": session},
    }
    payload = json.dumps(event)
    if tamper == "bad_signature":
        header = sign(payload, "whsec_not_the_secret")
    elif tamper == "stale_timestamp":
        header = sign(payload, SECRET, timestamp=int(time.time()) - 3600)
    elif tamper == "tampered_body":
        header = sign(payload, SECRET)
        payload = payload.replace('"paid"', '"paid" ')
    else:
        header = ""
    response = requests.post(
        f"{live_app.url}/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert _fresh(job.job_id).status == "awaiting_payment"
    assert db.session.scalar(select(func.count(StripeEvent.id))) == 0
    assert _upscale_queue(live_app.app) == []


def test_amount_mismatch_is_not_fulfilled_and_is_logged_for_the_admin(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _checkout(live_app)
    session = dict(
        stripe_local.state.sessions[job.stripe_checkout_session_id],
        payment_status="paid",
        status="complete",
        amount_total=1,
        payment_intent="pi_cheap",
    )
    event = {
        "id": "evt_cheap",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {"object": session},
    }
    assert _post_event(live_app, event) == 200
    again = _fresh(job.job_id)
    assert again.status == "awaiting_payment" and again.payment_status == "pending"
    assert "Stripe reports 1 usd, the job expects 50 usd" in (again.error_message or "")
    kinds = db.session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job.job_id)).all()
    assert "amount_mismatch" in kinds
    assert _upscale_queue(live_app.app) == []


def test_expired_session_abandons_the_job(live_app: LiveApp, stripe_local: LocalStripe) -> None:
    job = _checkout(live_app)
    stripe_local.expire(job.stripe_checkout_session_id)
    assert stripe_local.wait_idle(15)
    assert wait_until(lambda: _fresh(job.job_id).status == "abandoned")
    assert _fresh(job.job_id).payment_status == "pending"


def test_refund_through_stripe_is_recorded(live_app: LiveApp, stripe_local: LocalStripe) -> None:
    job = _checkout(live_app, width=2000, height=2000)  # 1.92
    paid = _pay_and_wait(live_app, stripe_local, job)
    with live_app.app.app_context():
        from storefront.jobs.stripe_api import stripe_client

        client = stripe_client(live_app.app)
        client.v1.refunds.create({"payment_intent": paid.stripe_payment_intent_id, "amount": 92})
    assert stripe_local.wait_idle(15)
    partial = wait_until(lambda: (j := _fresh(job.job_id)).refund_amount and j)
    assert (partial.refund_amount, partial.payment_status) == (Decimal("0.92"), "paid")
    with live_app.app.app_context():
        client.v1.refunds.create({"payment_intent": paid.stripe_payment_intent_id})
    assert stripe_local.wait_idle(15)
    full = wait_until(lambda: (j := _fresh(job.job_id)).payment_status == "refunded" and j)
    assert full.refund_amount == Decimal("1.92") and full.refunded_at is not None
    assert full.download_token is None


def test_dispute_is_recorded_and_revokes_access(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    job = _checkout(live_app)
    paid = _pay_and_wait(live_app, stripe_local, job)
    stripe_local.dispute(paid.stripe_payment_intent_id)
    assert stripe_local.wait_idle(15)
    disputed = wait_until(lambda: (j := _fresh(job.job_id)).disputed_at and j)
    assert disputed.download_token is None
    kinds = db.session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job.job_id)).all()
    assert "disputed" in kinds


def test_unknown_event_types_are_acknowledged_and_ignored(
    live_app: LiveApp, stripe_local: LocalStripe
) -> None:
    event = {"id": "evt_x", "object": "event", "type": "customer.created", "data": {"object": {}}}
    assert _post_event(live_app, event) == 200
    assert db.session.scalar(select(func.count(StripeEvent.id))) == 0


def test_database_failure_answers_5xx_so_stripe_retries(
    live_app: LiveApp, stripe_local: LocalStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _checkout(live_app)
    from sqlalchemy.exc import OperationalError

    import storefront.jobs.stripe_events as payments

    real = payments.fulfil_checkout_session
    calls = {"n": 0}

    def flaky(session: dict):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("UPDATE", {}, Exception("database is locked"))
        return real(session)

    monkeypatch.setitem(payments.EVENT_HANDLERS, "checkout.session.completed", flaky)
    _pay_and_wait(live_app, stripe_local, job)
    statuses = [d["status"] for d in stripe_local.deliveries("checkout.session.completed")]
    assert statuses[0] == 503 and statuses[-1] == 200
    assert _upscale_queue(live_app.app) == [f"upscale-{job.job_id}"]


def test_a_paid_session_marks_its_job_paid_with_one_statement_and_reads_no_job_row(
    app: Flask,
) -> None:
    """The burst path: one UPDATE … RETURNING pays the job; a payment that does not add up still
    takes the path that loads the job and says why."""
    attachment = make_attachment(app)
    job = make_job(attachment, email="", stripe_checkout_session_id="cs_test_one_statement")
    db.session.commit()
    session = {
        "id": "cs_test_one_statement",
        "object": "checkout.session",
        "amount_subtotal": 50,
        "amount_total": 50,
        "currency": "usd",
        "customer_details": {"email": "payer@example.com"},
        "metadata": {"job_id": job.job_id},
        "payment_intent": "pi_one_statement",
        "payment_status": "paid",
        "status": "complete",
        "total_details": {"amount_discount": 0, "amount_tax": 0},
    }
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(" ".join(statement.split()).upper())

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        cheap = {
            **session,
            "id": "cs_test_other",
            "amount_total": 1,
            "amount_subtotal": 1,
            "metadata": {},
        }
        assert handle_event(_completed(cheap, "evt_cheap")).note == "no job for this session"
        slow_reads = [s for s in statements if s.startswith("SELECT") and "FROM SMI_JOBS" in s]
        statements.clear()
        outcome = handle_event(_completed(session, "evt_one_statement"))
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert outcome.note == "paid"
    assert slow_reads  # the path that explains a refusal does read the job
    assert [s for s in statements if "SMI_JOBS" in s and not s.startswith("UPDATE")] == []
    assert len([s for s in statements if s.startswith("UPDATE SMI_JOBS")]) == 1
    paid = _fresh(job.job_id)
    assert (paid.status, paid.payment_status, paid.email) == (
        "pending",
        "paid",
        "payer@example.com",
    )
    assert paid.stripe_payment_intent_id == "pi_one_statement"
    assert paid.amount_charged == Decimal("0.50") and paid.amount_subtotal == Decimal("0.50")
    assert paid.paid_at is not None
    notes = db.session.scalars(select(JobEvent.message).where(JobEvent.job_id == job.job_id)).all()
    assert notes == ["0.50 usd, session cs_test_one_statement"]
    assert db.session.scalars(select(FunnelEvent.kind)).all() == ["paid"]
    assert db.session.scalar(select(func.count(StripeEvent.id))) == 2


def _completed(session: dict, event_id: str) -> dict:
    return {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": session},
    }
