"""The money path through Stripe's SDK: Checkout Sessions, fulfilment, refunds and disputes."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import stripe
from flask import Flask, current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storefront import funnel
from storefront.catalog.offers import offer_for
from storefront.catalog.pricing import from_minor_units, to_minor_units
from storefront.extensions import db
from storefront.jobs.queueing import after_payment
from storefront.jobs.state import get_job, record_event, transition
from storefront.models import JOB_STATUSES, Attachment, Job, StripeEvent, utcnow

log = logging.getLogger("smi.payments")

AfterCommit = Callable[[], None]


class CheckoutUnavailable(Exception):
    """Stripe could not start a Checkout Session; the job was closed."""


@dataclass
class Outcome:
    """What handling a Stripe object did, and what to do once it is committed."""

    changed: bool = False
    note: str = ""
    after_commit: list[AfterCommit] = field(default_factory=list)


def stripe_client(app: Flask) -> stripe.StripeClient:
    """The app's Stripe client, pointed at STRIPE_API_BASE when it is set."""
    client = app.extensions.get("smi_stripe")
    if client is None:
        key = app.config.get("STRIPE_SECRET_KEY")
        if not key:
            raise CheckoutUnavailable("STRIPE_SECRET_KEY is not set")
        base = app.config.get("STRIPE_API_BASE")
        http_client = stripe.RequestsClient(timeout=20)
        client = stripe.StripeClient(
            key,
            base_addresses={"api": base} if base else None,
            http_client=http_client,
            max_network_retries=2,
        )
        app.extensions["smi_stripe"] = client
        app.extensions["smi_stripe_http"] = http_client
    return client


def create_checkout(
    attachment: Attachment, resolution: str, email: str, *, user_agent: str | None
) -> tuple[Job, str]:
    """Create the job and its Checkout Session; return the job and the URL to send the buyer to.

    The caller has validated the form; the price is computed here, never taken from it.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    config = app.config
    offer = offer_for(attachment, resolution, config)
    if not offer.available:
        raise ValueError(offer.unavailable_reason)
    quote = offer.quote
    currency = config["CURRENCY"]
    base = config["PUBLIC_BASE_URL"]
    job = Job(
        job_id=str(uuid.uuid4()),
        post_id=attachment.post_id,
        attachment_id=attachment.id,
        image_url=f"{base}/images/{attachment.id}",
        image_width=attachment.width,
        image_height=attachment.height,
        resolution=resolution,
        email=email,
        status="awaiting_payment",
        payment_status="pending",
        amount_charged=quote.price,
        amount_cost=quote.cost.quantize(Decimal("0.01")),
        credits_used=quote.credits,
        currency=currency,
    )
    db.session.add(job)
    funnel.record(
        funnel.CHECKOUT_STARTED,
        post_id=attachment.post_id,
        attachment_id=attachment.id,
        job_id=job.job_id,
        user_agent=user_agent,
    )
    record_event(job.job_id, "created", f"{resolution} for {quote.price} {currency}")
    db.session.commit()

    expires_at = utcnow() + dt.timedelta(minutes=int(config["CHECKOUT_EXPIRY_MINUTES"]))
    title = attachment.title or attachment.original_filename
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": currency,
                    "unit_amount": to_minor_units(quote.price, currency),
                    "product_data": {
                        "name": f"{title}: {resolution} upscale, "
                        f"{quote.output_width} × {quote.output_height} px",
                    },
                },
            }
        ],
        "client_reference_id": job.job_id,
        "metadata": {"job_id": job.job_id},
        "payment_intent_data": {"metadata": {"job_id": job.job_id}},
        "success_url": f"{base}/orders/{job.job_id}?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{base}/images/{attachment.id}?cancelled=1",
        "expires_at": int(expires_at.replace(tzinfo=dt.UTC).timestamp()),
    }
    if email:
        params["customer_email"] = email
    try:
        session = stripe_client(app).v1.checkout.sessions.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": f"checkout-{job.job_id}"},
        )
    except (stripe.StripeError, CheckoutUnavailable) as exc:
        # No payment can come for this job: close it now rather than leave it waiting.
        transition(
            job.job_id,
            ["awaiting_payment"],
            status="abandoned",
            error_message=f"Checkout could not start: {type(exc).__name__}",
        )
        record_event(job.job_id, "checkout_failed", type(exc).__name__)
        db.session.commit()
        log.warning("job=%s checkout session failed: %s", job.job_id, type(exc).__name__)
        raise CheckoutUnavailable(str(exc)) from exc
    job.stripe_checkout_session_id = session.id
    job.checkout_expires_at = expires_at
    db.session.commit()
    log.info("job=%s checkout session=%s created", job.job_id, session.id)
    return job, str(session.url)


def _job_for_session(session: dict[str, Any]) -> Job | None:
    job_id = (session.get("metadata") or {}).get("job_id") or session.get("client_reference_id")
    if job_id:
        return get_job(str(job_id))
    return db.session.scalar(select(Job).where(Job.stripe_checkout_session_id == session.get("id")))


def fulfil_checkout_session(session: dict[str, Any]) -> Outcome:
    """Mark the session's job paid and queue it, once; safe to call any number of times.

    Called for `checkout.session.completed` / `async_payment_succeeded`, and by the order page
    when the buyer comes back before the webhook. The caller commits, then runs `after_commit`.
    """
    job = _job_for_session(session)
    if job is None:
        return Outcome(note="no job for this session")
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        return Outcome(note=f"session payment_status is {session.get('payment_status')}")
    if job.status not in ("awaiting_payment", "abandoned"):
        return Outcome(note=f"already {job.status}")
    expected = to_minor_units(job.amount_charged or Decimal(0), job.currency)
    paid_amount = session.get("amount_total")
    paid_currency = str(session.get("currency") or "").lower()
    if paid_amount != expected or paid_currency != job.currency:
        message = (
            f"Stripe reports {paid_amount} {paid_currency}, the job expects {expected} "
            f"{job.currency}; not fulfilled. Check the payment and refund it if needed."
        )
        if job.error_message != message:
            transition(job.job_id, [job.status or ""], error_message=message)
            record_event(job.job_id, "amount_mismatch", message)
        log.error("job=%s amount mismatch: %s", job.job_id, message)
        return Outcome(note="amount mismatch")
    details = session.get("customer_details") or {}
    email = job.email or str(details.get("email") or session.get("customer_email") or "")
    intent = session.get("payment_intent")
    if isinstance(intent, dict):
        intent = intent.get("id")
    changed = transition(
        job.job_id,
        ["awaiting_payment", "abandoned"],
        status="pending",
        payment_status="paid",
        paid_at=utcnow(),
        stripe_payment_intent_id=intent,
        stripe_checkout_session_id=session.get("id"),
        email=email,
        error_message=None,
    )
    if not changed:
        return Outcome(note="another request fulfilled it first")
    funnel.record(
        funnel.PAID,
        post_id=job.post_id,
        attachment_id=job.attachment_id,
        job_id=job.job_id,
        user_agent=None,
    )
    paid_note = f"{job.amount_charged} {job.currency}, session {session.get('id')}"
    record_event(job.job_id, "paid", paid_note)
    return Outcome(changed=True, note="paid", after_commit=[lambda: after_payment(job.job_id)])


def abandon_checkout_session(session: dict[str, Any], reason: str) -> Outcome:
    """An expired or failed session: its job will never be paid."""
    job = _job_for_session(session)
    if job is None:
        return Outcome(note="no job for this session")
    values: dict[str, Any] = {"status": "abandoned"}
    if reason == "async_payment_failed":
        values["payment_status"] = "failed"
    changed = transition(job.job_id, ["awaiting_payment"], **values)
    if changed:
        record_event(job.job_id, "abandoned", reason)
    return Outcome(changed=changed, note=reason if changed else f"already {job.status}")


def _revoke_download(job_id: str) -> None:
    transition(
        job_id,
        JOB_STATUSES,
        download_token=None,
        download_expires_at=None,
    )


def record_refund(charge: dict[str, Any]) -> Outcome:
    """`charge.refunded`: fill the refund columns; a full refund also ends download access."""
    job = _job_by_intent(charge.get("payment_intent"))
    if job is None:
        return Outcome(note="no job for this charge")
    currency = str(charge.get("currency") or job.currency)
    refunded = from_minor_units(int(charge.get("amount_refunded") or 0), currency)
    refunds = ((charge.get("refunds") or {}).get("data")) or []
    latest = refunds[0] if refunds else {}
    reason = (latest.get("metadata") or {}).get("reason") or latest.get("reason") or ""
    return apply_refund_total(job, refunded, reason)


def apply_refund_total(job: Job, refunded: Decimal, reason: str, actor: str = "stripe") -> Outcome:
    """Record `refunded` as the job's refunded total; idempotent. The caller commits."""
    full = refunded >= (job.amount_charged or Decimal(0))
    if job.refund_amount == refunded and (job.payment_status == "refunded") == full:
        return Outcome(note="refund already recorded")
    values: dict[str, Any] = {
        "refund_amount": refunded,
        "refunded_at": utcnow(),
        "refund_reason": reason or job.refund_reason or "refunded through Stripe",
    }
    if full:
        values["payment_status"] = "refunded"
    transition(job.job_id, [job.status or ""], **values)
    if full:
        _revoke_download(job.job_id)
    kind = "full" if full else "partial"
    note = f"{refunded} {job.currency} refunded in all ({kind})"
    record_event(job.job_id, "refunded", note, actor)
    return Outcome(changed=True, note=f"{kind} refund")


class RefundFailed(Exception):
    """Stripe did not make the refund; the message says why, for the admin."""


def refund_job(
    job: Job, *, amount: Decimal | None, reason: str, idempotency_key: str, actor: str = "system"
) -> Decimal:
    """Refund `amount` (all that remains when None) of a paid job through Stripe; return the total.

    The same `idempotency_key` never refunds twice. The refund columns are filled at once (the
    `charge.refunded` webhook then finds them recorded). The caller commits.
    """
    if not job.stripe_payment_intent_id:
        raise RefundFailed("the job has no Stripe payment to refund")
    already = job.refund_amount or Decimal(0)
    remaining = (job.amount_charged or Decimal(0)) - already
    amount = remaining if amount is None else amount
    if amount <= 0 or amount > remaining:
        raise RefundFailed(f"a refund must be between 0.01 and {remaining} {job.currency}")
    params: dict[str, Any] = {
        "payment_intent": job.stripe_payment_intent_id,
        "amount": to_minor_units(amount, job.currency),
        "reason": "requested_by_customer",
        "metadata": {"job_id": job.job_id, "reason": reason[:500]},
    }
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        refund = stripe_client(app).v1.refunds.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": idempotency_key},
        )
    except stripe.StripeError as exc:
        message = getattr(exc, "user_message", None) or type(exc).__name__
        raise RefundFailed(str(message)) from exc
    # The charge's total, not our sum: a replayed request returns the same refund again.
    client = stripe_client(app)
    try:
        charge = client.v1.charges.retrieve(str(refund.charge))
        total = from_minor_units(int(charge.amount_refunded), job.currency)
    except stripe.StripeError:
        total = already + from_minor_units(int(refund.amount), job.currency)
    # The charge.refunded webhook may have recorded it meanwhile: compare with the row as it is.
    apply_refund_total(get_job(job.job_id) or job, total, reason, actor)
    log.info("job=%s refund=%s amount=%s", job.job_id, refund.id, amount)
    return total


def record_dispute(dispute: dict[str, Any]) -> Outcome:
    """`charge.dispute.created`: flag the job and end its download access."""
    job = _job_by_intent(dispute.get("payment_intent"))
    if job is None:
        return Outcome(note="no job for this dispute")
    if job.disputed_at is not None:
        return Outcome(note="dispute already recorded")
    transition(job.job_id, [job.status or ""], disputed_at=utcnow())
    _revoke_download(job.job_id)
    record_event(job.job_id, "disputed", f"reason: {dispute.get('reason') or 'unknown'}")
    return Outcome(changed=True, note="dispute recorded")


def _job_by_intent(intent: Any) -> Job | None:
    if isinstance(intent, dict):
        intent = intent.get("id")
    if not intent:
        return None
    return db.session.scalar(
        select(Job)
        .where(Job.stripe_payment_intent_id == str(intent))
        .execution_options(populate_existing=True)
    )


def retrieve_session(session_id: str) -> dict[str, Any]:
    """The Checkout Session as Stripe has it now, as a plain dict."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    session = stripe_client(app).v1.checkout.sessions.retrieve(session_id)
    return session.to_dict()


def run_after_commit(outcome: Outcome) -> None:
    """Run what an outcome deferred until its transaction was committed."""
    for action in outcome.after_commit:
        action()


def _session_completed(obj: dict[str, Any]) -> Outcome:
    if obj.get("payment_status") == "unpaid":
        return Outcome(note="paid later (asynchronous payment method)")
    return fulfil_checkout_session(obj)


EVENT_HANDLERS: dict[str, Callable[[dict[str, Any]], Outcome]] = {
    "checkout.session.completed": _session_completed,
    "checkout.session.async_payment_succeeded": fulfil_checkout_session,
    "checkout.session.async_payment_failed": lambda obj: abandon_checkout_session(
        obj, "async_payment_failed"
    ),
    "checkout.session.expired": lambda obj: abandon_checkout_session(obj, "session expired"),
    "charge.refunded": record_refund,
    "charge.dispute.created": record_dispute,
}


def handle_event(event: dict[str, Any]) -> Outcome:
    """Apply a verified Stripe event once: its id is stored in the transaction of its effect."""
    event_id, event_type = str(event.get("id")), str(event.get("type"))
    handler = EVENT_HANDLERS.get(event_type)
    if handler is None:
        return Outcome(note=f"ignored {event_type}")
    if db.session.scalar(select(StripeEvent.id).where(StripeEvent.event_id == event_id)):
        return Outcome(note="duplicate event")
    obj = (event.get("data") or {}).get("object") or {}
    outcome = handler(obj)
    job_id = (obj.get("metadata") or {}).get("job_id")
    db.session.add(StripeEvent(event_id=event_id, type=event_type, job_id=job_id))
    try:
        db.session.commit()
    except IntegrityError:
        # The same event, delivered twice at once: the other delivery committed first.
        db.session.rollback()
        return Outcome(note="duplicate event")
    log.info("stripe_event=%s type=%s job=%s %s", event_id, event_type, job_id, outcome.note)
    run_after_commit(outcome)
    return outcome
