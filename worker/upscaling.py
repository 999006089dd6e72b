"""Upscaling a paid job: claim it, run the engine, store the file atomically, complete it once."""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from decimal import Decimal
from pathlib import Path

from flask import Flask, current_app
from rq import get_current_job

from storefront.catalog.offers import engine_for
from storefront.extensions import db
from storefront.jobs.delivery import new_token
from storefront.jobs.queueing import enqueue_email
from storefront.jobs.state import get_job, record_event, transition
from storefront.jobs.stripe_events import RefundFailed, refund_job
from storefront.models import Job, utcnow
from storefront.storage import resolve, storage_root
from worker.engines import PermanentUpscaleError, get_engine
from worker.imaging import image_size

log = logging.getLogger("smi.worker")


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined]


def _is_last_attempt() -> bool:
    """Whether RQ will not retry this task again if it fails now."""
    current = get_current_job()
    return current is None or not current.retries_left


def upscale_job(job_id: str) -> str:
    """Upscale a paid job once; transient errors go back to RQ for a retry with backoff."""
    job = get_job(job_id)
    if job is None:
        log.warning("job=%s unknown; nothing to do", job_id)
        return "unknown job"
    if job.status != "pending" or job.payment_status != "paid":
        return f"nothing to do: {job.status}/{job.payment_status}"
    claimed = transition(
        job_id,
        ["pending"],
        where=[Job.payment_status == "paid"],
        status="processing",
        processing_started_at=utcnow(),
        attempts=Job.attempts + 1,
    )
    if claimed:
        record_event(job_id, "processing", f"attempt {job.attempts + 1}")
    db.session.commit()
    if not claimed:
        return "claimed by another worker"
    job = get_job(job_id)
    assert job is not None
    try:
        if current_app.config["UPSCALER"] == "upsampler":
            from worker import upsampler as upsampler_jobs  # here: that module imports this one

            return upsampler_jobs.submit(job)
        output = _make_output(job)
    except PermanentUpscaleError as exc:
        db.session.rollback()
        fail_job(job_id, f"Upscaling failed: {exc}")
        return "failed"
    except Exception as exc:
        db.session.rollback()
        if _is_last_attempt():
            fail_job(job_id, f"Upscaling failed after retries: {type(exc).__name__}: {exc}")
            raise
        # Give the job back so RQ's retry can claim it again.
        transition(job_id, ["processing"], status="pending", error_message=str(exc)[:1000])
        record_event(job_id, "attempt_failed", f"{type(exc).__name__}: {exc}"[:1000])
        db.session.commit()
        raise
    return complete_job(job, output)


def _output_path(job: Job, suffix: str) -> Path:
    slug = job.post.slug if job.post else "image"
    return (
        storage_root(_app())
        / "deliveries"
        / job.job_id
        / (f"{slug}-{job.attachment_id}-{job.resolution}{suffix}")
    )


def _make_output(job: Job) -> Path:
    """Run the engine into a temporary file, check its size, and rename it into place."""
    attachment = job.attachment
    if attachment is None:
        raise PermanentUpscaleError("the image is no longer in the catalog")
    source = resolve(_app(), attachment.file_path)
    if not source.is_file():
        raise PermanentUpscaleError("the original file is missing")
    suffix = source.suffix.lower() if source.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
    final = _output_path(job, suffix)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".tmp-{uuid.uuid4().hex}{suffix}")
    config = current_app.config
    # A tier over the neural engine's time guard is offered on the local engine (or not at all);
    # a paid job whose settings changed since is never failed for it: local does it then.
    name = engine_for(attachment.width, attachment.height, job.factor, config) or "local"
    engine = get_engine(name, config)
    record_event(job.job_id, "engine", name)
    try:
        engine.upscale(source, job.factor, temporary)
        expected = ((job.image_width or 0) * job.factor, (job.image_height or 0) * job.factor)
        actual = image_size(temporary)
        if actual != expected:
            raise PermanentUpscaleError(
                f"the output is {actual[0]}×{actual[1]}, expected {expected[0]}×{expected[1]}"
            )
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    return final


def complete_job(
    job: Job, output: Path, *, credits_used: int = 0, cost: Decimal = Decimal("0.00")
) -> str:
    """Record the delivered file and its token in one transaction, then queue the email."""
    app = _app()
    relative = output.relative_to(storage_root(app)).as_posix()
    _token, digest = new_token()  # replaced by the email task, which shows its own token once
    hours = int(app.config["DOWNLOAD_EXPIRY_HOURS"])
    completed = transition(
        job.job_id,
        ["processing"],
        where=[Job.payment_status == "paid"],
        status="completed",
        upscaled_file_path=relative,
        upscaled_file_size=output.stat().st_size,
        credits_used=credits_used,
        amount_cost=cost,
        download_token=digest,
        download_expires_at=utcnow() + dt.timedelta(hours=hours),
        download_count=0,
        completed_at=utcnow(),
        error_message=None,
    )
    if not completed:
        # Refunded (or taken over) while we worked: the file must not be delivered.
        db.session.rollback()
        output.unlink(missing_ok=True)
        log.warning("job=%s was no longer processing and paid; output discarded", job.job_id)
        return "discarded"
    record_event(job.job_id, "completed", f"{output.name}, {output.stat().st_size} bytes")
    db.session.commit()
    enqueue_email("ready", job.job_id)
    if job.amount_charged is not None and cost > job.amount_charged:
        enqueue_email("cost_alert", job.job_id)
    log.info("job=%s completed", job.job_id)
    return "completed"


def fail_job(job_id: str, reason: str) -> bool:
    """Fail a job for good: keep the error, refund the buyer in full, tell them and the admin."""
    failed = transition(
        job_id,
        ["pending", "processing"],
        status="failed",
        failed_at=utcnow(),
        error_message=reason[:2000],
    )
    if failed:
        record_event(job_id, "failed", reason[:2000])
    db.session.commit()
    if failed:
        log.error("job=%s failed: %s", job_id, reason)
        refund_failed_job(job_id)
    return failed


def refund_failed_job(job_id: str) -> str:
    """Refund a failed, paid job in full (once), then send the buyer's and the admin's emails."""
    job = get_job(job_id)
    if job is None or job.status != "failed":
        return "not failed"
    if job.payment_status != "paid" or job.refunded_at is not None:
        return "nothing to refund"
    try:
        refund_job(
            job,
            amount=None,
            reason="We couldn't process the image",
            idempotency_key=f"refund-failed-{job_id}",
        )
    except RefundFailed as exc:
        db.session.rollback()
        record_event(job_id, "refund_failed", str(exc))
        db.session.commit()
        log.error("job=%s automatic refund failed: %s", job_id, exc)
        enqueue_email("admin_alert", job_id)
        return "refund failed"
    db.session.commit()
    enqueue_email("failed", job_id)
    enqueue_email("admin_alert", job_id)
    return "refunded"
