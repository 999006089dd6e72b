"""Refunds through Stripe, each recorded once and told to the buyer once; a failed job's refund."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe
from sqlalchemy import or_

from storefront import transactions
from storefront.catalog.pricing import from_minor_units, to_minor_units
from storefront.jobs import metrics
from storefront.jobs.queueing import enqueue_email, queue_email
from storefront.jobs.state import get_job, record_event, transition
from storefront.jobs.stripe_api import stripe_client
from storefront.models import JOB_STATUSES, Job, utcnow
from storefront.transactions import AfterCommit

log = logging.getLogger("smi.refunds")


class RefundFailed(Exception):
    """Stripe did not make the refund; the message says why, for the admin."""


def remaining_refundable(job: Job) -> Decimal:
    """What a refund may still return."""
    return (job.amount_charged or Decimal(0)) - (job.refund_amount or Decimal(0))


def revoke_download(job_id: str) -> None:
    """End the job's download link, whatever its state (the caller's transaction)."""
    transition(job_id, JOB_STATUSES, download_token=None, download_expires_at=None)


def apply_refund_total(job: Job, refunded: Decimal, reason: str, actor: str = "stripe") -> bool:
    """Record `refunded` as the job's refunded total; True only if this call changed the row.

    Part of the caller's transaction. The total only grows: the conditional UPDATE matches nothing
    when the row already holds as much (an older event, or the same refund recorded first by the
    admin's request or Stripe's webhook), whatever the job's status. A full refund also ends
    download access.
    """
    if refunded <= 0:
        return False
    full = refunded >= (job.amount_charged or Decimal(0))
    values: dict[str, Any] = {
        "refund_amount": refunded,
        "refunded_at": utcnow(),
        "refund_reason": reason or job.refund_reason or "refunded through Stripe",
    }
    if full:
        values["payment_status"] = "refunded"
    grows = or_(Job.refund_amount.is_(None), Job.refund_amount < refunded)
    if not transition(job.job_id, JOB_STATUSES, where=[grows], **values):
        return False
    if full:
        revoke_download(job.job_id)
    kind = "full" if full else "partial"
    metrics.count_on_commit(metrics.REFUNDS, kind=kind)
    record_event(
        job.job_id, "refunded", f"{refunded} {job.currency} refunded in all ({kind})", actor
    )
    return True


def queue_refund_email(job_id: str) -> AfterCommit:
    """Write the buyer's email about a refund just recorded, in the caller's transaction; return
    the after-commit action that hands it to RQ.

    Once per refund: only the request or event whose conditional UPDATE recorded the new total
    calls this. A failed job refunded in full gets the "failed" email instead (it says so), once
    per job: the automatic refund queues that same one.
    """
    job = get_job(job_id)
    if job is not None and job.status == "failed" and job.payment_status == "refunded":
        return queue_email("failed", job_id)
    return queue_email("refunded", job_id, unique=False)


@dataclass(frozen=True)
class Refunded:
    """What `refund_job` did: the charge's refunded total, and whether this call recorded it."""

    total: Decimal
    recorded: bool


def refund_job(
    job: Job, *, amount: Decimal | None, reason: str, idempotency_key: str, actor: str = "system"
) -> Refunded:
    """Refund `amount` (all that remains when None) of a paid job through Stripe.

    The same `idempotency_key` never refunds twice. The refund columns are filled at once, in the
    caller's transaction, unless the `charge.refunded` webhook recorded them first (then
    `recorded` is False, and the webhook tells the buyer; else the caller does).
    """
    if not job.stripe_payment_intent_id:
        raise RefundFailed("the job has no Stripe payment to refund")
    remaining = remaining_refundable(job)
    amount = remaining if amount is None else amount
    if amount <= 0 or amount > remaining:
        raise RefundFailed(f"a refund must be between 0.01 and {remaining} {job.currency}")
    params: dict[str, Any] = {
        "payment_intent": job.stripe_payment_intent_id,
        "amount": to_minor_units(amount, job.currency),
        "reason": "requested_by_customer",
        "metadata": {"job_id": job.job_id, "reason": reason[:500]},
    }
    client = stripe_client()
    try:
        refund = client.v1.refunds.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": idempotency_key},
        )
    except stripe.StripeError as exc:
        message = getattr(exc, "user_message", None) or type(exc).__name__
        raise RefundFailed(str(message)) from exc
    # The charge's total, not our sum: a replayed request returns the same refund again.
    try:
        charge = client.v1.charges.retrieve(str(refund.charge))
        total = from_minor_units(int(charge.amount_refunded), job.currency)
    except stripe.StripeError:
        total = (job.refund_amount or Decimal(0)) + from_minor_units(
            int(refund.amount), job.currency
        )
    # The charge.refunded webhook may have recorded it meanwhile: the UPDATE compares with the row.
    recorded = apply_refund_total(job, total, reason, actor)
    log.info("job=%s refund=%s amount=%s", job.job_id, refund.id, amount)
    return Refunded(total, recorded)


def refund_failed_job(job_id: str) -> str:
    """Refund a failed, paid job in full (once), then send the buyer's and the admin's emails."""
    job = get_job(job_id)
    if job is None or job.status != "failed":
        return "not failed"
    if job.payment_status != "paid" or job.refunded_at is not None:
        return "nothing to refund"
    if not job.stripe_payment_intent_id and not job.amount_charged:
        # A promotion code made the order free: Stripe took no payment, there is none to refund.
        record_event(job_id, "refund_skipped", "nothing was charged for this order")
        transactions.commit(
            lambda: enqueue_email("failed_free", job_id),
            lambda: enqueue_email("admin_alert", job_id),
        )
        return "nothing charged"
    try:
        refund_job(
            job,
            amount=None,
            reason="We couldn't process the image",
            idempotency_key=f"refund-failed-{job_id}",
        )
    except RefundFailed as exc:
        transactions.rollback()
        record_event(job_id, "refund_failed", str(exc))
        transactions.commit(lambda: enqueue_email("admin_alert", job_id))
        log.error("job=%s automatic refund failed: %s", job_id, exc)
        return "refund failed"
    transactions.commit(
        lambda: enqueue_email("failed", job_id), lambda: enqueue_email("admin_alert", job_id)
    )
    return "refunded"
