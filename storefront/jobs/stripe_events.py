"""Stripe's word on a job: paid, expired, refunded or disputed, each applied once.

A webhook event is stored under its unique id in the transaction of its effect; the order page and
the sweeper ask Stripe about a session and apply its answer the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storefront import funnel, transactions
from storefront.catalog.pricing import from_minor_units, to_minor_units
from storefront.extensions import db
from storefront.jobs.queueing import after_payment
from storefront.jobs.refunds import apply_refund_total, revoke_download
from storefront.jobs.state import get_job, record_event, transition
from storefront.jobs.stripe_api import CheckoutUnavailable, retrieve_session
from storefront.models import Job, StripeEvent, utcnow
from storefront.transactions import AfterCommit

log = logging.getLogger("smi.payments")

PAID_SESSION_STATES = ("paid", "no_payment_required")


@dataclass
class Outcome:
    """What handling a Stripe object did, and what to do once it is committed."""

    changed: bool = False
    note: str = ""
    after_commit: list[AfterCommit] = field(default_factory=list)


def _job_for_session(session: dict[str, Any]) -> Job | None:
    job_id = (session.get("metadata") or {}).get("job_id") or session.get("client_reference_id")
    if job_id:
        return get_job(str(job_id))
    return db.session.scalar(select(Job).where(Job.stripe_checkout_session_id == session.get("id")))


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


def _amount_mismatch(job: Job, session: dict[str, Any]) -> str | None:
    """Why the session's total does not pay for the job, or None when it does."""
    expected = to_minor_units(job.amount_charged or Decimal(0), job.currency)
    paid_amount = session.get("amount_total")
    paid_currency = str(session.get("currency") or "").lower()
    if paid_amount == expected and paid_currency == job.currency:
        return None
    return (
        f"Stripe reports {paid_amount} {paid_currency}, the job expects {expected} "
        f"{job.currency}; not fulfilled. Check the payment and refund it if needed."
    )


def fulfil_checkout_session(session: dict[str, Any]) -> Outcome:
    """Mark the session's job paid, once; part of the caller's transaction.

    For `checkout.session.completed` / `async_payment_succeeded`, and for a session the order
    page or the sweeper asked Stripe about. The upscale is queued after the commit.
    """
    job = _job_for_session(session)
    if job is None:
        return Outcome(note="no job for this session")
    if session.get("payment_status") not in PAID_SESSION_STATES:
        return Outcome(note=f"session payment_status is {session.get('payment_status')}")
    if job.status not in ("awaiting_payment", "abandoned"):
        return Outcome(note=f"already {job.status}")
    mismatch = _amount_mismatch(job, session)
    if mismatch:
        if job.error_message != mismatch:
            transition(job.job_id, [job.status or ""], error_message=mismatch)
            record_event(job.job_id, "amount_mismatch", mismatch)
        log.error("job=%s amount mismatch: %s", job.job_id, mismatch)
        return Outcome(note="amount mismatch")
    details = session.get("customer_details") or {}
    intent = session.get("payment_intent")
    changed = transition(
        job.job_id,
        ["awaiting_payment", "abandoned"],
        status="pending",
        payment_status="paid",
        paid_at=utcnow(),
        stripe_payment_intent_id=intent.get("id") if isinstance(intent, dict) else intent,
        stripe_checkout_session_id=session.get("id"),
        email=job.email or str(details.get("email") or session.get("customer_email") or ""),
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
    record_event(
        job.job_id, "paid", f"{job.amount_charged} {job.currency}, session {session.get('id')}"
    )
    job_id = job.job_id
    return Outcome(changed=True, note="paid", after_commit=[lambda: after_payment(job_id)])


def abandon_checkout_session(session: dict[str, Any], reason: str) -> Outcome:
    """An expired or failed session: its job will never be paid (the caller's transaction)."""
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


def settle_session(session: dict[str, Any], abandon_reason: str) -> Outcome:
    """Apply what Stripe says now of a session: paid, or closed unpaid; commits.

    A session still open is left alone (the buyer may yet pay).
    """
    if session.get("payment_status") == "paid":
        outcome = fulfil_checkout_session(session)
    elif session.get("status") in ("expired", "complete") or session.get("status") is None:
        outcome = abandon_checkout_session(session, abandon_reason)
    else:
        return Outcome(note="still open")
    transactions.commit(*outcome.after_commit)
    return outcome


def confirm_return(job: Job, session_id: str) -> Job:
    """The buyer came back from Stripe before its webhook: ask Stripe, apply the answer, and
    return the job as it is now.

    Stripe unreachable changes nothing: the webhook will do it, and the order page keeps polling.
    """
    if job.status != "awaiting_payment" or not session_id:
        return job
    try:
        outcome = fulfil_checkout_session(retrieve_session(session_id))
        transactions.commit(*outcome.after_commit)
    except (stripe.StripeError, CheckoutUnavailable) as exc:
        transactions.rollback()
        log.warning("job=%s could not check the session: %s", job.job_id, type(exc).__name__)
    return get_job(job.job_id) or job


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
    if not apply_refund_total(job, refunded, reason):
        return Outcome(note="refund already recorded")
    full = refunded >= (job.amount_charged or Decimal(0))
    return Outcome(changed=True, note="full refund" if full else "partial refund")


def record_dispute(dispute: dict[str, Any]) -> Outcome:
    """`charge.dispute.created`: flag the job and end its download access."""
    job = _job_by_intent(dispute.get("payment_intent"))
    if job is None:
        return Outcome(note="no job for this dispute")
    if job.disputed_at is not None:
        return Outcome(note="dispute already recorded")
    transition(job.job_id, [job.status or ""], disputed_at=utcnow())
    revoke_download(job.job_id)
    record_event(job.job_id, "disputed", f"reason: {dispute.get('reason') or 'unknown'}")
    return Outcome(changed=True, note="dispute recorded")


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
    """Apply a verified Stripe event once: its id is stored in the transaction of its effect.

    SQLAlchemyError propagates (after a rollback) so that the webhook answers 5xx and Stripe
    retries.
    """
    event_id, event_type = str(event.get("id")), str(event.get("type"))
    handler = EVENT_HANDLERS.get(event_type)
    if handler is None:
        return Outcome(note=f"ignored {event_type}")
    if db.session.scalar(select(StripeEvent.id).where(StripeEvent.event_id == event_id)):
        return Outcome(note="duplicate event")
    obj = (event.get("data") or {}).get("object") or {}
    try:
        outcome = handler(obj)
        job_id = (obj.get("metadata") or {}).get("job_id")
        db.session.add(StripeEvent(event_id=event_id, type=event_type, job_id=job_id))
        transactions.commit(*outcome.after_commit)
    except IntegrityError:
        # The same event, delivered twice at once: the other delivery committed first.
        transactions.rollback()
        return Outcome(note="duplicate event")
    except Exception:
        transactions.rollback()
        raise
    log.info("stripe_event=%s type=%s job=%s %s", event_id, event_type, job_id, outcome.note)
    return outcome
