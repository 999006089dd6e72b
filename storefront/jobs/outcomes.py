"""How an upscale ends: claimed by a worker, given back for a retry, completed once, or failed and
refunded. Each is one conditional UPDATE, committed here, with its after-commit work queued.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from decimal import Decimal

from flask import current_app
from sqlalchemy import and_, or_

from storefront import settings, transactions
from storefront.jobs import metrics
from storefront.jobs.delivery import new_token
from storefront.jobs.queueing import enqueue_upsampler_check, queue_email
from storefront.jobs.refunds import refund_failed_job
from storefront.jobs.state import get_job, record_event, transition
from storefront.models import Job, utcnow
from storefront.storage import StoredObject, remove_stored_file

log = logging.getLogger("smi.worker")


def claim_job(job: Job) -> bool:
    """Take a paid, pending job for this worker (pending → processing); False if another did."""
    claimed = transition(
        job.job_id,
        ["pending"],
        where=[Job.payment_status == "paid"],
        status="processing",
        processing_started_at=utcnow(),
        attempts=Job.attempts + 1,
    )
    if claimed:
        record_event(job.job_id, "processing", f"attempt {job.attempts + 1}")
    transactions.commit()
    return claimed


def note_engine(job_id: str, engine: str) -> None:
    """Say in the job's timeline which engine upscales it."""
    record_event(job_id, "engine", engine)
    transactions.commit()


def give_back(job_id: str, error: Exception) -> None:
    """An attempt failed in a way a retry may mend: the job waits for RQ's next attempt."""
    transactions.rollback()
    transition(job_id, ["processing"], status="pending", error_message=str(error)[:1000])
    record_event(job_id, "attempt_failed", f"{type(error).__name__}: {error}"[:1000])
    transactions.commit()


def begin_submission(job_id: str) -> str | None:
    """Open the job's one submission to Upsampler: a new key, committed before the API call.

    None when this run of the job has one open already (an earlier attempt sent it, or may have:
    it crashed before recording the answer). A run ends when the job fails, so a job the admin
    puts back on the queue after a failure may be sent anew.
    """
    key = secrets.token_hex(16)
    opened = transition(
        job_id,
        ["processing"],
        where=[
            or_(
                # Never sent (a job sent before submissions were recorded counts as sent) …
                and_(
                    Job.upsampler_submitted_at.is_(None),
                    or_(Job.upsampler_job_id.is_(None), Job.failed_at.is_not(None)),
                ),
                # … or sent in a run that has ended in a failure since.
                Job.failed_at >= Job.upsampler_submitted_at,
            )
        ],
        upsampler_submission_key=key,
        upsampler_submitted_at=utcnow(),
        upsampler_job_id=None,
    )
    if opened:
        record_event(job_id, "submitting", "sending it to Upsampler")
    transactions.commit()
    return key if opened else None


def abandon_submission(job_id: str, key: str) -> None:
    """Upsampler surely never took it (no connection, or turned away): a later attempt may send
    it. Only the submission `key` names, and only while no provider job is recorded."""
    transactions.rollback()
    transition(
        job_id,
        ["processing"],
        where=[Job.upsampler_submission_key == key, Job.upsampler_job_id.is_(None)],
        upsampler_submission_key=None,
        upsampler_submitted_at=None,
    )
    transactions.commit()


def record_submission(job_id: str, provider_job_id: str, first_check_in: int, key: str) -> bool:
    """Upsampler took the job: keep its id, and schedule the first status check.

    Only for the submission `key` names, while the job is processing; False (nothing recorded,
    nothing scheduled) when it ended or was sent anew meanwhile.
    """
    recorded = transition(
        job_id,
        ["processing"],
        where=[Job.upsampler_submission_key == key],
        upsampler_job_id=provider_job_id,
    )
    if recorded:
        record_event(job_id, "submitted", f"Upsampler job {provider_job_id}")
    transactions.commit(
        *(
            [lambda: enqueue_upsampler_check(job_id, delay_seconds=first_check_in, attempt=1)]
            if recorded
            else []
        )
    )
    if not recorded:
        log.warning(
            "job=%s Upsampler job %s not recorded: the job moved on", job_id, provider_job_id
        )
    return recorded


def complete_job(
    job: Job, output: StoredObject, *, credits_used: int = 0, cost: Decimal = Decimal("0.00")
) -> str:
    """Record the delivered file and its token in one transaction, then queue the email.

    A job refunded (or taken over) meanwhile is not completed, and the file is deleted.
    """
    relative, size = output.key, output.size
    _token, digest = new_token()  # replaced by the email task, which shows its own token once
    hours = int(settings.get("DOWNLOAD_EXPIRY_HOURS"))
    completed = transition(
        job.job_id,
        ["processing"],
        where=[Job.payment_status == "paid"],
        status="completed",
        upscaled_file_path=relative,
        upscaled_file_size=size,
        credits_used=credits_used,
        amount_cost=cost,
        download_token=digest,
        download_expires_at=utcnow() + dt.timedelta(hours=hours),
        download_count=0,
        completed_at=utcnow(),
        error_message=None,
    )
    if not completed:
        transactions.rollback()
        current = get_job(job.job_id)
        # Two attempts of one job (a requeued one beside one thought dead) write the same path:
        # the one that lost must not delete the file the winner recorded.
        if current is None or current.upscaled_file_path != relative:
            remove_stored_file(current_app, relative)
        log.warning("job=%s was no longer processing and paid; output discarded", job.job_id)
        return "discarded"
    record_event(job.job_id, "completed", f"{relative.rsplit('/', 1)[-1]}, {size} bytes")
    metrics.count_on_commit(metrics.PROVIDER_CREDITS, credits_used)
    # The emails are written in this transaction: Redis being down cannot lose them.
    emails = [queue_email("ready", job.job_id)]
    if job.amount_charged is not None and cost > job.amount_charged:
        emails.append(queue_email("cost_alert", job.job_id))
    transactions.commit(*emails)
    log.info("job=%s completed", job.job_id)
    return "completed"


def fail_job(job_id: str, reason: str) -> bool:
    """Fail a job for good: keep the error, refund the buyer in full, tell them and the admin."""
    transactions.rollback()
    failed = transition(
        job_id,
        ["pending", "processing"],
        status="failed",
        failed_at=utcnow(),
        error_message=reason[:2000],
    )
    if failed:
        record_event(job_id, "failed", reason[:2000])
    transactions.commit()
    if failed:
        log.error("job=%s failed: %s", job_id, reason)
        refund_failed_job(job_id)
    return failed
