"""Stripe's word on a job: paid, expired, refunded or disputed, each applied once.

A webhook event is stored under its unique id in the transaction of its effect; the order page and
the sweeper ask Stripe about a session and apply its answer the same way.

A session pays or closes a job only if it is the session the job recorded. The job id a session
carries (metadata, or `client_reference_id`, which a Payment Link's URL can set) is a claim: a paid
session that claims a job it is not recorded on leaves the job unpaid and is noted on its timeline.
That holds too in the moment between Stripe creating the job's session and create_checkout storing
its id: the buyer is sent to pay only after that commit, and the order page (with Stripe's
`session_id`) and the sweeper ask Stripe about the recorded session afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import stripe
from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError

from storefront import funnel, transactions
from storefront.catalog.pricing import from_minor_units, to_minor_units
from storefront.extensions import db
from storefront.jobs import metrics
from storefront.jobs.queueing import queue_after_payment
from storefront.jobs.refunds import apply_refund_total, queue_refund_email, revoke_download
from storefront.jobs.state import get_job, record_event, transition
from storefront.jobs.stripe_api import (
    CheckoutUnavailable,
    retrieve_payment_intent,
    retrieve_session,
)
from storefront.models import Job, StripeEvent, utcnow
from storefront.queues import redis_connection
from storefront.transactions import AfterCommit

log = logging.getLogger("smi.payments")

PAID_SESSION_STATES = ("paid", "no_payment_required")
# The order page asks Stripe about a job's unpaid session at most once in this many seconds.
SESSION_CHECK_SECONDS = 10


@dataclass
class Outcome:
    """What handling a Stripe object did, and what to do once it is committed."""

    changed: bool = False
    note: str = ""
    after_commit: list[AfterCommit] = field(default_factory=list)


def _job_for_session(session: dict[str, Any]) -> Job | None:
    """The job that recorded this Checkout Session as its own; None for any other session."""
    session_id = session.get("id")
    if not session_id:
        return None
    return db.session.scalar(
        select(Job)
        .where(Job.stripe_checkout_session_id == str(session_id))
        .execution_options(populate_existing=True)
    )


def _claimed_job(obj: dict[str, Any]) -> Job | None:
    """The job a Stripe object names in its metadata or client_reference_id: a claim, no proof."""
    job_id = (obj.get("metadata") or {}).get("job_id") or obj.get("client_reference_id")
    return get_job(str(job_id)) if job_id else None


def _intent_id(intent: Any) -> str | None:
    if isinstance(intent, dict):
        intent = intent.get("id")
    return str(intent) if intent else None


def _job_by_intent(intent: Any) -> Job | None:
    intent_id = _intent_id(intent)
    if not intent_id:
        return None
    return db.session.scalar(
        select(Job)
        .where(Job.stripe_payment_intent_id == intent_id)
        .execution_options(populate_existing=True)
    )


def _note_foreign_session(session: dict[str, Any]) -> Outcome:
    """A paid session that names a job but is not its own: the job stays unpaid; tell the owner."""
    job = _claimed_job(session)
    if job is None:
        return Outcome(note="no job for this session")
    currency = str(session.get("currency") or job.currency).lower()
    amount = from_minor_units(int(session.get("amount_total") or 0), currency)
    whose = (
        "the job's own session is another one"
        if job.stripe_checkout_session_id
        else "the job had no session recorded yet (if it is its own, the order page and the "
        "sweeper apply it once it is)"
    )
    record_event(
        job.job_id,
        "foreign_session",
        f"Stripe session {session.get('id')} was paid ({amount} {currency}, payment "
        f"{_intent_id(session.get('payment_intent'))}) and names this job, but {whose}: it did "
        "not pay the job. Look into the payment, and refund it in Stripe if it was not for this "
        "order.",
    )
    log.error("job=%s a paid session that is not the job's names it", job.job_id)
    return Outcome(note="session is not the job's")


@dataclass(frozen=True)
class Charged:
    """What a session charged for its job: the price, less a discount, plus tax (job currency)."""

    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    total: Decimal


def _minor(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _session_totals(session: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """The session's total, subtotal, discount and tax in minor units; None if one is not a
    whole number."""
    total = _minor(session.get("amount_total"))
    subtotal = _minor(session.get("amount_subtotal", total))
    details = session.get("total_details") or {}
    discount = _minor(details.get("amount_discount") or 0)
    tax = _minor(details.get("amount_tax") or 0)
    if total is None or subtotal is None or discount is None or tax is None:
        return None
    return total, subtotal, discount, tax


def _session_charge(job: Job, session: dict[str, Any]) -> Charged | str:
    """What the session charged, if its own totals pay for the job; else why not.

    The subtotal must be the job's price and the total subtotal − discount + tax, a discount only
    if the job's session allowed promotion codes and tax only if it had automatic tax.
    """
    price = job.amount_subtotal if job.amount_subtotal is not None else job.amount_charged
    expected = to_minor_units(price or Decimal(0), job.currency)
    totals = _session_totals(session)
    paid_currency = str(session.get("currency") or "").lower()

    def refused(why: str = "", expects: int = expected) -> str:
        return (
            f"Stripe reports {session.get('amount_total')} {paid_currency}, the job expects "
            f"{expects} {job.currency}{why}; not fulfilled. Check the payment and refund it if "
            "needed."
        )

    if totals is None or paid_currency != job.currency:
        return refused()
    total, subtotal, discount, tax = totals
    if subtotal != expected:
        return refused(f" (a subtotal of {subtotal}, not the price)")
    if not 0 <= discount <= subtotal or tax < 0:
        return refused(f" (a discount of {discount} and tax of {tax} cannot be)")
    if discount and not job.promotion_codes_allowed:
        return refused(f" (a discount of {discount}, but promotion codes were off for this order)")
    if tax and not job.automatic_tax:
        return refused(f" (tax of {tax}, but automatic tax was off for this order)")
    if total != subtotal - discount + tax:
        return refused(
            f" (a subtotal of {subtotal}, a discount of {discount} and tax of {tax})",
            subtotal - discount + tax,
        )
    currency = job.currency
    return Charged(
        subtotal=from_minor_units(subtotal, currency),
        discount=from_minor_units(discount, currency),
        tax=from_minor_units(tax, currency),
        total=from_minor_units(total, currency),
    )


def _pay_own_session(session: dict[str, Any]) -> Outcome | None:
    """The common case in one statement: the session is its job's own, the job awaits payment
    (or was abandoned) and the session's totals pay for it; the job is marked paid, and the
    columns the rest of the payment needs come back (UPDATE … RETURNING).

    None when the session's figures do not add up or no job matched: `fulfil_checkout_session`
    then loads the job and says why. The conditions are those of `_session_charge`, written in
    SQL: a job this UPDATE pays, `_session_charge` would pay too.
    """
    totals = _session_totals(session)
    currency = str(session.get("currency") or "").lower()
    session_id = session.get("id")
    if totals is None or not session_id:
        return None
    total, subtotal, discount, tax = totals
    if not 0 <= discount <= subtotal or tax < 0 or total != subtotal - discount + tax:
        return None
    charged = Charged(
        subtotal=from_minor_units(subtotal, currency),
        discount=from_minor_units(discount, currency),
        tax=from_minor_units(tax, currency),
        total=from_minor_units(total, currency),
    )
    conditions = [
        Job.stripe_checkout_session_id == str(session_id),
        Job.status.in_(("awaiting_payment", "abandoned")),
        Job.currency == currency,
        func.coalesce(Job.amount_subtotal, Job.amount_charged, 0) == charged.subtotal,
    ]
    if discount:
        conditions.append(Job.promotion_codes_allowed.is_(True))
    if tax:
        conditions.append(Job.automatic_tax.is_(True))
    paid = db.session.execute(
        update(Job)
        .where(*conditions)
        .values(**_paid_columns(session, charged))
        .returning(
            Job.job_id,
            Job.post_id,
            Job.attachment_id,
            Job.resolution,
            Job.image_width,
            Job.image_height,
        )
        .execution_options(synchronize_session=False)
    ).first()
    if paid is None:
        return None
    return _paid(
        paid.job_id,
        (paid.post_id, paid.attachment_id, paid.resolution, currency),
        (paid.image_width, paid.image_height, int(paid.resolution.rstrip("x"))),
        charged,
        str(session_id),
    )


def _paid_columns(session: dict[str, Any], charged: Charged) -> dict[str, Any]:
    """The columns of a job the session pays for, as `_pay_own_session` sets them."""
    customer = session.get("customer_details") or {}
    buyer = str(customer.get("email") or session.get("customer_email") or "")
    now = utcnow()
    return {
        "status": "pending",
        "payment_status": "paid",
        "paid_at": now,
        "updated_at": now,
        "stripe_payment_intent_id": _intent_id(session.get("payment_intent")),
        # The buyer may have left the email to Stripe: it fills an empty one, never replaces one.
        "email": case((Job.email == "", buyer), else_=Job.email),
        "error_message": None,
        "amount_charged": charged.total,
        "amount_subtotal": charged.subtotal,
        "amount_discount": charged.discount,
        "amount_tax": charged.tax,
    }


def _paid(
    job_id: str,
    job: tuple[int | None, int | None, str, str],
    size: tuple[int | None, int | None, int],
    charged: Charged,
    session_id: str,
) -> Outcome:
    """What follows in the payment's transaction once a job is marked paid: the funnel, the
    timeline, the count, and the upscale and email to queue after the commit. `job`: its post,
    attachment, resolution and currency."""
    post_id, attachment_id, resolution, currency = job
    funnel.record(
        funnel.PAID,
        post_id=post_id,
        attachment_id=attachment_id,
        job_id=job_id,
        user_agent=None,
    )
    breakdown = ""
    if charged.discount or charged.tax:
        breakdown = f" (price {charged.subtotal}, discount {charged.discount}, tax {charged.tax})"
    record_event(job_id, "paid", f"{charged.total} {currency}{breakdown}, session {session_id}")
    metrics.count_on_commit(metrics.PAYMENTS, resolution=resolution)
    # The email is written down in this transaction: one commit less than a transaction of its own.
    return Outcome(changed=True, note="paid", after_commit=queue_after_payment(job_id, size))


def fulfil_checkout_session(session: dict[str, Any]) -> Outcome:
    """Mark the session's job paid, once; part of the caller's transaction.

    For `checkout.session.completed` / `async_payment_succeeded`, and for a session the order
    page or the sweeper asked Stripe about. Only the job's recorded session pays it (see the
    module's docstring). The upscale is queued after the commit.
    """
    if session.get("payment_status") not in PAID_SESSION_STATES:
        return Outcome(note=f"session payment_status is {session.get('payment_status')}")
    outcome = _pay_own_session(session)
    if outcome is not None:
        return outcome
    job = _job_for_session(session)
    if job is None:
        return _note_foreign_session(session)
    if job.status not in ("awaiting_payment", "abandoned"):
        return Outcome(note=f"already {job.status}")
    charged = _session_charge(job, session)
    if isinstance(charged, str):
        mismatch = charged
        if job.error_message != mismatch:
            transition(job.job_id, [job.status or ""], error_message=mismatch)
            record_event(job.job_id, "amount_mismatch", mismatch)
        log.error("job=%s amount mismatch: %s", job.job_id, mismatch)
        return Outcome(note="amount mismatch")
    details = session.get("customer_details") or {}
    changed = transition(
        job.job_id,
        ["awaiting_payment", "abandoned"],
        where=[Job.stripe_checkout_session_id == str(session.get("id"))],
        status="pending",
        payment_status="paid",
        paid_at=utcnow(),
        stripe_payment_intent_id=_intent_id(session.get("payment_intent")),
        email=job.email or str(details.get("email") or session.get("customer_email") or ""),
        error_message=None,
        amount_charged=charged.total,
        amount_subtotal=charged.subtotal,
        amount_discount=charged.discount,
        amount_tax=charged.tax,
    )
    if not changed:
        return Outcome(note="another request fulfilled it first")
    return _paid(
        job.job_id,
        (job.post_id, job.attachment_id, job.resolution, job.currency),
        (job.image_width, job.image_height, job.factor),
        charged,
        str(session.get("id")),
    )


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
    if session.get("payment_status") in PAID_SESSION_STATES:
        outcome = fulfil_checkout_session(session)
    elif session.get("status") in ("expired", "complete") or session.get("status") is None:
        outcome = abandon_checkout_session(session, abandon_reason)
    else:
        return Outcome(note="still open")
    transactions.commit(*outcome.after_commit)
    return outcome


def _may_ask_stripe(job_id: str) -> bool:
    """True at most once per SESSION_CHECK_SECONDS for a job, across every web process (a Redis
    key that expires); True as well when Redis cannot say, so that the page still works."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        first = redis_connection(app).set(
            f"smi:stripe-check:{job_id}", "1", nx=True, ex=SESSION_CHECK_SECONDS
        )
    except RedisError as exc:
        log.warning("job=%s no Redis to pace Stripe checks (%s)", job_id, type(exc).__name__)
        return True
    return bool(first)


def confirm_return(job: Job, session_id: str) -> Job:
    """The buyer came back from Stripe before its webhook: ask Stripe, apply the answer, and
    return the job as it is now.

    Only the job's own session is asked about, at most once per SESSION_CHECK_SECONDS (the page
    reloads itself while it waits). Stripe unreachable changes nothing: the webhook will do it,
    and the order page keeps polling.
    """
    if job.status != "awaiting_payment" or not session_id:
        return job
    if session_id != job.stripe_checkout_session_id or not _may_ask_stripe(job.job_id):
        return job
    try:
        outcome = fulfil_checkout_session(retrieve_session(session_id))
        transactions.commit(*outcome.after_commit)
    except (stripe.StripeError, CheckoutUnavailable) as exc:
        transactions.rollback()
        log.warning("job=%s could not check the session: %s", job.job_id, type(exc).__name__)
    return get_job(job.job_id) or job


def _paid_before_refund(
    intent_id: str | None, charge: dict[str, Any]
) -> tuple[Job | None, Outcome]:
    """A refund of a payment no job knows: the job the PaymentIntent names, once Stripe confirms
    that the job's own session was paid by it (applied now, as the order page would).

    A refund of a payment that did not pay the job it names is noted on its timeline. Stripe
    errors propagate: the webhook answers 5xx, nothing is stored, and Stripe retries.
    """
    none = Outcome(note="no job for this charge")
    if not intent_id:
        return None, none
    job = _claimed_job(retrieve_payment_intent(intent_id))
    if job is None:
        return None, none
    settled = Outcome()
    if not job.stripe_payment_intent_id and job.stripe_checkout_session_id:
        settled = fulfil_checkout_session(retrieve_session(job.stripe_checkout_session_id))
        paid = _job_by_intent(intent_id)
        if paid is not None:
            return paid, settled
    currency = str(charge.get("currency") or job.currency).lower()
    refunded = from_minor_units(int(charge.get("amount_refunded") or 0), currency)
    record_event(
        job.job_id,
        "foreign_refund",
        f"Stripe refunded {refunded} {currency} of payment {intent_id}, which names this job "
        "but did not pay it; the job's refund columns are unchanged.",
    )
    return None, Outcome(
        note="refund of a payment that did not pay its job", after_commit=settled.after_commit
    )


def record_refund(charge: dict[str, Any]) -> Outcome:
    """`charge.refunded`: raise the job's refunded total (it never goes down) and tell the buyer,
    once; a full refund also ends download access."""
    intent_id = _intent_id(charge.get("payment_intent"))
    job, settled = _job_by_intent(intent_id), Outcome()
    if job is None:
        job, settled = _paid_before_refund(intent_id, charge)
        if job is None:
            return settled
    currency = str(charge.get("currency") or job.currency)
    refunded = from_minor_units(int(charge.get("amount_refunded") or 0), currency)
    refunds = ((charge.get("refunds") or {}).get("data")) or []
    latest = refunds[0] if refunds else {}
    reason = (latest.get("metadata") or {}).get("reason") or latest.get("reason") or ""
    if not apply_refund_total(job, refunded, reason):
        return Outcome(note="refund already recorded", after_commit=settled.after_commit)
    full = refunded >= (job.amount_charged or Decimal(0))
    return Outcome(
        changed=True,
        note="full refund" if full else "partial refund",
        after_commit=[*settled.after_commit, queue_refund_email(job.job_id)],
    )


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
        metrics.count(metrics.WEBHOOK_EVENTS, type=event_type, outcome="processed")
        return Outcome(note=f"ignored {event_type}")
    if db.session.scalar(select(StripeEvent.id).where(StripeEvent.event_id == event_id)):
        metrics.count(metrics.WEBHOOK_EVENTS, type=event_type, outcome="duplicate")
        return Outcome(note="duplicate event")
    obj = (event.get("data") or {}).get("object") or {}
    try:
        outcome = handler(obj)
        job_id = (obj.get("metadata") or {}).get("job_id")
        db.session.add(StripeEvent(event_id=event_id, type=event_type, job_id=job_id))
        metrics.count_on_commit(metrics.WEBHOOK_EVENTS, type=event_type, outcome="processed")
        transactions.commit(*outcome.after_commit)
    except IntegrityError:
        # The same event, delivered twice at once: the other delivery committed first.
        transactions.rollback()
        metrics.count(metrics.WEBHOOK_EVENTS, type=event_type, outcome="duplicate")
        return Outcome(note="duplicate event")
    except Exception:
        transactions.rollback()
        raise
    log.info("stripe_event=%s type=%s job=%s %s", event_id, event_type, job_id, outcome.note)
    return outcome
