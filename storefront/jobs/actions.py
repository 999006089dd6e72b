"""What an admin may do to a job: each action checks the job's state, changes it with one
conditional UPDATE, writes the timeline and the audit log, and commits before anything is queued.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import stripe
from flask import current_app
from sqlalchemy.exc import IntegrityError

from storefront import transactions
from storefront.accounts.audit import already_done, log_action
from storefront.jobs.delivery import file_kept, is_delivered_and_paid, renew_link
from storefront.jobs.queueing import enqueue_processing, queue_email
from storefront.jobs.refunds import (
    RefundFailed,
    queue_refund_email,
    refund_job,
    remaining_refundable,
)
from storefront.jobs.state import get_job, record_event, transition
from storefront.jobs.stripe_api import CheckoutUnavailable, expire_session
from storefront.models import Job, utcnow
from storefront.storage import remove_stored_file
from storefront.transactions import AfterCommit

log = logging.getLogger("smi.admin")

CENT = Decimal("0.01")
MAX_EXTEND_HOURS = 168


class ActionRefused(Exception):
    """The job's state does not allow the action; the message says why, and nothing changed."""


@dataclass(frozen=True)
class Action:
    """An action of the job page: its button, what confirming it does, and when it is allowed."""

    name: str
    label: str
    explanation: str
    danger: bool
    why_not: Callable[[Job, dt.datetime], str | None]


def _state(job: Job) -> str:
    return f"this one is {job.status}, payment {job.payment_status}"


def _why_not_retry(job: Job, now: dt.datetime) -> str | None:
    if job.status != "failed" or job.payment_status != "paid" or job.refunded_at is not None:
        return f"Only a failed, paid job that was not refunded can be retried; {_state(job)}."
    return None


def _why_not_refund(job: Job, now: dt.datetime) -> str | None:
    if job.payment_status != "paid":
        return f"Only a paid job can be refunded; {_state(job)}."
    if not job.stripe_payment_intent_id:
        return "This job has no Stripe payment to refund."
    if remaining_refundable(job) <= 0:
        return "This job has been refunded in full already."
    return None


def _why_not_resend(job: Job, now: dt.datetime) -> str | None:
    if not is_delivered_and_paid(job):
        return (
            f"Only a completed, paid, undisputed job can get a fresh download link; {_state(job)}."
        )
    if not file_kept(job):
        return "The delivered file is no longer kept, so there is nothing to send."
    return None


def _why_not_extend(job: Job, now: dt.datetime) -> str | None:
    reason = _why_not_resend(job, now)
    if reason:
        return reason.replace("get a fresh download link", "have its link extended")
    if not job.download_token:
        return (
            "The link has no token (it was revoked, or a fresh-link email is on its way): "
            "resend the download email instead."
        )
    return None


def _why_not_revoke(job: Job, now: dt.datetime) -> str | None:
    live = job.download_expires_at is not None and job.download_expires_at > now
    if not job.download_token and not live:
        return "This job has no working download link to revoke."
    return None


def _why_not_abandon(job: Job, now: dt.datetime) -> str | None:
    if job.status != "awaiting_payment":
        return f"Only a job awaiting payment can be marked abandoned; {_state(job)}."
    return None


def _why_not_delete_file(job: Job, now: dt.datetime) -> str | None:
    if not job.upscaled_file_path:
        return "This job has no delivered file."
    if job.status == "processing":
        return "The job is being processed; wait until it ends."
    return None


ACTIONS: dict[str, Action] = {
    action.name: action
    for action in (
        Action(
            "retry",
            "Retry the upscale",
            "The job goes back on the upscale queue; the buyer gets the usual email when done.",
            False,
            _why_not_retry,
        ),
        Action(
            "refund",
            "Refund",
            "Stripe returns the money to the buyer's card. A full refund also ends the download "
            "link.",
            True,
            _why_not_refund,
        ),
        Action(
            "resend",
            "Resend the download email",
            "A fresh link (new token, new expiry, downloads counted anew) is emailed to the "
            "buyer; the old link works until the new one is sent.",
            False,
            _why_not_resend,
        ),
        Action(
            "extend",
            "Extend the link",
            "The current link keeps working for longer. No email is sent.",
            False,
            _why_not_extend,
        ),
        Action(
            "revoke",
            "Revoke the link",
            "The download link stops working at once. The file is kept until the cleanup.",
            True,
            _why_not_revoke,
        ),
        Action(
            "abandon",
            "Mark abandoned",
            "The checkout is closed: Stripe's session is expired so it can no longer be paid.",
            True,
            _why_not_abandon,
        ),
        Action(
            "delete_file",
            "Delete the delivered file",
            "The upscaled file is removed from storage and the link stops working. "
            "This cannot be undone.",
            True,
            _why_not_delete_file,
        ),
    )
}


def available_actions(job: Job, now: dt.datetime | None = None) -> dict[str, str | None]:
    """Each action's name, with None where it is allowed or the reason it is not."""
    now = now or utcnow()
    return {name: action.why_not(job, now) for name, action in ACTIONS.items()}


def _load(job_id: str, action: str) -> Job:
    job = get_job(job_id)
    if job is None:
        raise ActionRefused("There is no such job.")
    reason = ACTIONS[action].why_not(job, utcnow())
    if reason:
        raise ActionRefused(reason)
    return job


def _changed_meanwhile() -> ActionRefused:
    transactions.rollback()
    return ActionRefused("The job changed meanwhile; nothing was done. Look at it again.")


def _commit(*after: AfterCommit) -> None:
    """Commit the action with its audit line, then run `after`; AlreadyDone for a twin form."""
    try:
        transactions.commit(*after)
    except IntegrityError as exc:
        # The same form, submitted twice at once: the other submission did it.
        transactions.rollback()
        raise AlreadyDone() from exc


class AlreadyDone(Exception):
    """This very form was submitted before: the action was done then, and is not done again."""


def _guard(request_id: str | None) -> None:
    if already_done(request_id):
        raise AlreadyDone()


def parse_amount(raw: str, job: Job) -> Decimal | None:
    """The refund amount from the form: empty means all that remains; ActionRefused if invalid."""
    text = raw.strip().lstrip("$€£").replace(",", "")
    if not text:
        return None
    try:
        amount = Decimal(text)
        # Quantizing 1e30 to the cent overflows: that is no amount either.
        in_cents = amount.is_finite() and amount == amount.quantize(CENT, rounding=ROUND_HALF_UP)
    except InvalidOperation as exc:
        raise ActionRefused(f"{raw!r} is not an amount; enter something like 1.25.") from exc
    if not in_cents:
        raise ActionRefused("Enter the amount in cents at most, like 1.25.")
    remaining = remaining_refundable(job)
    if amount <= 0 or amount > remaining:
        raise ActionRefused(
            f"A refund must be between 0.01 and {remaining} {job.currency.upper()}."
        )
    return amount


def retry(job_id: str, admin: str, request_id: str | None = None) -> str:
    """Put a failed, paid, unrefunded job back on the upscale queue."""
    _guard(request_id)
    job = _load(job_id, "retry")
    if not transition(
        job.job_id,
        ["failed"],
        where=[Job.payment_status == "paid", Job.refunded_at.is_(None)],
        status="pending",
        attempts=0,
        error_message=None,
    ):
        raise _changed_meanwhile()
    record_event(job.job_id, "admin_retry", "put back on the upscale queue", actor=admin)
    log_action(admin, "retry", job.job_id, "", request_id)
    _commit(lambda: enqueue_processing(job.job_id))
    return "The job is back on the upscale queue."


def refund(
    job_id: str, amount_raw: str, reason: str, admin: str, request_id: str | None = None
) -> str:
    """Refund all or part of a paid job through Stripe, once per form however often it is sent."""
    _guard(request_id)
    job = _load(job_id, "refund")
    reason = reason.strip()
    if not reason:
        raise ActionRefused("Give a reason for the refund; the buyer's bank statement won't.")
    amount = parse_amount(amount_raw, job)
    key = f"admin-refund-{job.job_id}-{request_id}" if request_id else None
    if key is None:
        key = f"admin-refund-{job.job_id}-{job.refund_amount or 0}-{amount or 'rest'}"
    refunded = amount if amount is not None else remaining_refundable(job)
    try:
        done = refund_job(job, amount=amount, reason=reason, idempotency_key=key, actor=admin)
    except RefundFailed as exc:
        transactions.rollback()
        raise ActionRefused(f"Stripe did not make the refund: {exc}") from exc
    note = f"{refunded} {job.currency} ({reason[:200]})"
    # Who asked, in the timeline; the "refunded" total is noted once, by this or the webhook,
    # and whichever of the two records it tells the buyer.
    record_event(job.job_id, "admin_refund", note, actor=admin)
    log_action(admin, "refund", job.job_id, note, request_id)
    _commit(*([queue_refund_email(job.job_id)] if done.recorded else []))
    return f"Refunded {refunded} {job.currency.upper()} (total refunded: {done.total})."


def resend(job_id: str, admin: str, request_id: str | None = None) -> str:
    """Email a new link with a fresh expiry; the old one works until the new one is sent."""
    _guard(request_id)
    job = _load(job_id, "resend")
    if not renew_link(job.job_id, actor=admin):
        raise _changed_meanwhile()
    log_action(admin, "resend", job.job_id, f"to {job.email}", request_id)
    # The email is written in this transaction: it survives Redis or SMTP being down.
    handover = queue_email("link", job.job_id, unique=False)
    _commit(handover)
    return (
        f"A fresh link is on its way to {job.email}; the old one works until the new one is sent."
    )


def extend(job_id: str, hours: int, admin: str, request_id: str | None = None) -> str:
    """Keep the current link working `hours` longer (from now if it has expired)."""
    _guard(request_id)
    if not 1 <= hours <= MAX_EXTEND_HOURS:
        raise ActionRefused(f"Extend by 1 to {MAX_EXTEND_HOURS} hours.")
    job = _load(job_id, "extend")
    now = utcnow()
    start = max(now, job.download_expires_at or now)
    new_expiry = start + dt.timedelta(hours=hours)
    if not transition(
        job.job_id,
        ["completed"],
        where=[Job.download_token == job.download_token, Job.payment_status == "paid"],
        download_expires_at=new_expiry,
    ):
        raise _changed_meanwhile()
    note = f"by {hours} hours, to {new_expiry:%Y-%m-%d %H:%M} UTC"
    record_event(job.job_id, "admin_extend", note, actor=admin)
    log_action(admin, "extend", job.job_id, note, request_id)
    _commit()
    return f"The link now works until {new_expiry:%Y-%m-%d %H:%M} UTC."


def revoke(job_id: str, admin: str, request_id: str | None = None) -> str:
    """End the download link now; the file stays until the cleanup removes it."""
    _guard(request_id)
    job = _load(job_id, "revoke")
    now = utcnow()
    if not transition(
        job.job_id,
        [job.status or ""],
        where=[Job.download_token.is_not_distinct_from(job.download_token)],
        download_token=None,
        download_expires_at=now,
    ):
        raise _changed_meanwhile()
    record_event(job.job_id, "admin_revoke", "the download link no longer works", actor=admin)
    log_action(admin, "revoke", job.job_id, "", request_id)
    _commit()
    return "The download link no longer works."


def abandon(job_id: str, admin: str, request_id: str | None = None) -> str:
    """Close a checkout that will not be paid, and expire its Stripe session."""
    _guard(request_id)
    job = _load(job_id, "abandon")
    if not transition(job.job_id, ["awaiting_payment"], status="abandoned"):
        raise _changed_meanwhile()
    record_event(job.job_id, "abandoned", "marked abandoned by an admin", actor=admin)
    log_action(admin, "abandon", job.job_id, "", request_id)
    _commit()
    note = ""
    if job.stripe_checkout_session_id:
        try:
            expire_session(job.stripe_checkout_session_id)
        except (stripe.StripeError, CheckoutUnavailable) as exc:
            # A payment that still comes is fulfilled anyway (abandoned jobs may be paid).
            note = f" Stripe's session could not be expired ({type(exc).__name__})."
            log.warning("job=%s session expire failed: %s", job.job_id, type(exc).__name__)
    return "The job is marked abandoned." + note


def delete_file(job_id: str, admin: str, request_id: str | None = None) -> str:
    """Remove the delivered file from storage; the link stops working."""
    _guard(request_id)
    job = _load(job_id, "delete_file")
    relative = job.upscaled_file_path
    assert relative is not None
    if not transition(
        job.job_id,
        [job.status or ""],
        where=[Job.upscaled_file_path == relative],
        upscaled_file_path=None,
        upscaled_file_size=None,
        download_token=None,
    ):
        raise _changed_meanwhile()
    record_event(job.job_id, "admin_delete_file", relative, actor=admin)
    log_action(admin, "delete_file", job.job_id, relative, request_id)
    _commit()
    # Only once the row no longer points at the file is the file removed.
    remove_stored_file(current_app, relative)
    return "The delivered file is deleted."


def run(action: str, job_id: str, admin: str, request_id: str | None, **fields: str) -> str:
    """Run an action by name with the fields of its confirmation form; the message to show."""
    if action == "refund":
        return refund(job_id, fields.get("amount", ""), fields.get("reason", ""), admin, request_id)
    if action == "extend":
        try:
            hours = int(fields.get("hours", ""))
        except ValueError as exc:
            raise ActionRefused(f"Extend by 1 to {MAX_EXTEND_HOURS} hours.") from exc
        return extend(job_id, hours, admin, request_id)
    simple: dict[str, Callable[[str, str, str | None], str]] = {
        "retry": retry,
        "resend": resend,
        "revoke": revoke,
        "abandon": abandon,
        "delete_file": delete_file,
    }
    if action not in simple:
        raise ActionRefused(f"There is no action {action!r}.")
    return simple[action](job_id, admin, request_id)
