"""Upscaling a paid job: claim it, run its engine through the output writer, complete it once."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flask import current_app
from rq import get_current_job

from storefront.jobs import metrics
from storefront.jobs.estimates import engine_for
from storefront.jobs.outcomes import claim_job, complete_job, fail_job, give_back, note_engine
from storefront.jobs.state import get_job
from storefront.models import Job
from storefront.storage import StoredObject, backend
from worker import upsampler
from worker.engines import PermanentUpscaleError, get_engine
from worker.output import write_output

log = logging.getLogger("smi.worker")

DELIVERED_SUFFIXES = (".jpg", ".jpeg", ".png")


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
    if not claim_job(job):
        return "claimed by another worker"
    job = get_job(job_id)
    assert job is not None
    try:
        if current_app.config["UPSCALER"] == "upsampler":
            return upsampler.submit(job)
        output = _make_output(job)
    except PermanentUpscaleError as exc:
        fail_job(job_id, f"Upscaling failed: {exc}")
        return "failed"
    except Exception as exc:
        if _is_last_attempt():
            fail_job(job_id, f"Upscaling failed after retries: {type(exc).__name__}: {exc}")
        else:
            give_back(job_id, exc)  # RQ's retry claims it again
        raise
    return complete_job(job, output)


def _make_output(job: Job) -> StoredObject:
    """Run the tier's engine on (a local copy of) the original, through the output writer."""
    attachment = job.attachment
    if attachment is None:
        raise PermanentUpscaleError("the image is no longer in the catalog")
    storage = backend(current_app._get_current_object())  # type: ignore[attr-defined]
    if storage.stat(attachment.file_path) is None:
        raise PermanentUpscaleError("the original file is missing")
    original_suffix = Path(attachment.file_path).suffix.lower()
    suffix = original_suffix if original_suffix in DELIVERED_SUFFIXES else ".png"
    config = current_app.config
    # A tier over the neural engine's time guard is offered on the local engine (or not at all);
    # a paid job whose settings changed since is never failed for it: local does it then.
    name = engine_for(attachment.width, attachment.height, job.factor, config) or "local"
    engine = get_engine(name, config)
    note_engine(job.job_id, name)
    started = time.monotonic()
    with storage.local_copy(attachment.file_path) as source:
        output = write_output(
            job, suffix, lambda temporary: engine.upscale(source, job.factor, temporary)
        )
    seconds = time.monotonic() - started
    metrics.observe(metrics.UPSCALE_SECONDS, seconds, engine=name, resolution=job.resolution)
    return output
