"""The sweeper: finds paid jobs and emails that fell through a crack and puts them back on their
way."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import stripe
from flask import current_app
from sqlalchemy import ColumnElement, select

from storefront import transactions
from storefront.extensions import db
from storefront.jobs import outbox
from storefront.jobs.outcomes import fail_job
from storefront.jobs.queueing import (
    enqueue_email,
    enqueue_processing,
    enqueue_upsampler_check,
    hand_over,
    processing_timeout,
)
from storefront.jobs.refunds import refund_failed_job
from storefront.jobs.state import record_event, transition
from storefront.jobs.stripe_api import CheckoutUnavailable, retrieve_session
from storefront.jobs.stripe_events import settle_session
from storefront.models import EmailOutbox, Job, utcnow

log = logging.getLogger("smi.sweeper")

QUEUE_GRACE = dt.timedelta(minutes=1)
STALE_GRACE = dt.timedelta(minutes=2)
CHECKOUT_GRACE = dt.timedelta(minutes=5)
EMAIL_GRACE = dt.timedelta(minutes=10)


@dataclass
class SweepReport:
    """What one sweep did, by kind."""

    queued: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    fulfilled: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of counts."""
        return ", ".join(f"{name} {len(items)}" for name, items in vars(self).items())


def _ids(*conditions: ColumnElement[bool]) -> list[str]:
    return list(db.session.scalars(select(Job.job_id).where(*conditions).limit(500)))


def sweep(now: dt.datetime | None = None) -> SweepReport:
    """One pass over every kind of stuck job."""
    now = now or utcnow()
    report = SweepReport()
    _queue_unqueued(now, report)
    _recover_dead_workers(now, report)
    _settle_expired_checkouts(now, report)
    _hand_over_outbox(now, report)
    _resend_missing_emails(now, report)
    _retry_refunds(now, report)
    log.info("sweep: %s", report.summary())
    return report


def _queue_unqueued(now: dt.datetime, report: SweepReport) -> None:
    """Paid while Redis was down, or its RQ record was lost: queue it."""
    for job_id in _ids(
        Job.status == "pending", Job.payment_status == "paid", Job.paid_at < now - QUEUE_GRACE
    ):
        if enqueue_processing(job_id):
            report.queued.append(job_id)


def _recover_dead_workers(now: dt.datetime, report: SweepReport) -> None:
    """Its worker died mid-job: requeue a bounded number of times, then fail and refund."""
    timeout = dt.timedelta(minutes=int(current_app.config["PROCESSING_TIMEOUT_MINUTES"]))
    max_attempts = int(current_app.config["PROCESSING_MAX_ATTEMPTS"])
    stale = db.session.scalars(
        select(Job).where(
            Job.status == "processing", Job.processing_started_at < now - timeout - STALE_GRACE
        )
    ).all()
    for job in stale:
        started = job.processing_started_at
        own_timeout = dt.timedelta(seconds=processing_timeout(job.job_id))
        if started and started > now - own_timeout - STALE_GRACE:
            continue  # a long neural upscale still within its own time
        if job.upsampler_job_id:
            # Upsampler has it: a fresh status check fails and refunds it if it timed out.
            enqueue_upsampler_check(job.job_id)
        elif job.attempts >= max_attempts:
            if fail_job(job.job_id, f"The upscale did not finish in {job.attempts} attempts"):
                report.failed.append(job.job_id)
        elif _requeue(job.job_id, started):
            report.requeued.append(job.job_id)


def _requeue(job_id: str, started: dt.datetime | None) -> bool:
    """Give a dead worker's job back to the queue, unless it moved on meanwhile."""
    if not transition(
        job_id, ["processing"], where=[Job.processing_started_at == started], status="pending"
    ):
        return False
    record_event(job_id, "requeued", "the worker stopped answering; trying again")
    transactions.commit(lambda: enqueue_processing(job_id, replace_live=True))
    return True


def _settle_expired_checkouts(now: dt.datetime, report: SweepReport) -> None:
    """A checkout past its expiry: ask Stripe whether it was paid after all."""
    expiry = dt.timedelta(minutes=int(current_app.config["CHECKOUT_EXPIRY_MINUTES"]))
    for job in db.session.scalars(
        select(Job).where(
            Job.status == "awaiting_payment",
            db.or_(
                Job.checkout_expires_at < now - CHECKOUT_GRACE,
                db.and_(
                    Job.checkout_expires_at.is_(None),
                    Job.created_at < now - expiry - CHECKOUT_GRACE,
                ),
            ),
        )
    ).all():
        _settle_checkout(job, report)


def _hand_over_outbox(now: dt.datetime, report: SweepReport) -> None:
    """Emails written down but never handed to RQ (Redis was down), or handed over and never sent
    (RQ gave up, or lost the job): to RQ again. One that RQ still has is left to it."""
    for outbox_id, job_id in outbox.due(now - QUEUE_GRACE):
        if hand_over(outbox_id):
            report.emails.append(job_id)


def _resend_missing_emails(now: dt.datetime, report: SweepReport) -> None:
    """Completed, but the ready email never went out nor was written into the outbox (a job
    completed before the outbox existed)."""
    in_outbox = select(EmailOutbox.id).where(
        EmailOutbox.job_id == Job.job_id, EmailOutbox.kind == "ready"
    )
    for job_id in _ids(
        Job.status == "completed",
        Job.email_sent.is_not(True),
        Job.payment_status == "paid",
        Job.completed_at < now - EMAIL_GRACE,
        ~in_outbox.exists(),
    ):
        if enqueue_email("ready", job_id):
            report.emails.append(job_id)


def _retry_refunds(now: dt.datetime, report: SweepReport) -> None:
    """Failed and paid but not refunded (Stripe was unreachable at the time)."""
    for job_id in _ids(
        Job.status == "failed",
        Job.payment_status == "paid",
        Job.refunded_at.is_(None),
        Job.failed_at < now - QUEUE_GRACE,
        Job.amount_charged > 0,  # a free order (a promotion code) has nothing to refund
    ):
        if refund_failed_job(job_id) == "refunded":
            report.refunds.append(job_id)


def _settle_checkout(job: Job, report: SweepReport) -> None:
    if not job.stripe_checkout_session_id:
        if transition(job.job_id, ["awaiting_payment"], status="abandoned"):
            record_event(job.job_id, "abandoned", "no Checkout Session was ever created")
            report.abandoned.append(job.job_id)
        transactions.commit()
        return
    try:
        session = retrieve_session(job.stripe_checkout_session_id)
    except (stripe.StripeError, CheckoutUnavailable) as exc:
        log.warning("job=%s session check failed: %s", job.job_id, type(exc).__name__)
        return
    outcome = settle_session(session, "session expired (found by the sweeper)")
    if outcome.changed:
        paid = session.get("payment_status") == "paid"
        (report.fulfilled if paid else report.abandoned).append(job.job_id)
