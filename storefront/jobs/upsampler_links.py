"""Upsampler.com's ways in: signed URLs of originals for it to fetch, and its callbacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask
from itsdangerous import BadSignature, Signer, URLSafeTimedSerializer

from storefront.jobs.queueing import enqueue_upsampler_check
from storefront.jobs.state import get_job
from storefront.storage import StoredObject, backend

log = logging.getLogger("smi.provider")

ORIGINAL_URL_SECONDS = 4 * 3600


def _original_serializer(app: Flask) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(app.config["SECRET_KEY"], salt="smi-upsampler-original")


def _callback_signer(app: Flask) -> Signer:
    return Signer(app.config["SECRET_KEY"], salt="smi-upsampler-callback")


def original_url(app: Flask, job_id: str) -> str:
    """A URL of the job's original that only works for a few hours, for the provider to fetch:
    the bucket's own (presigned) with object storage, else the shop's signed `/originals/`."""
    job = get_job(job_id)
    if job is not None and job.attachment is not None:
        url = backend(app).download_url(
            job.attachment.file_path, ORIGINAL_URL_SECONDS, content_type=job.attachment.mime_type
        )
        if url is not None:
            return url
    token = _original_serializer(app).dumps(job_id)
    return f"{app.config['PUBLIC_BASE_URL']}/originals/{token}"


def job_for_original_token(app: Flask, token: str) -> str | None:
    """The job id in a still-valid original URL token; None when forged or expired."""
    try:
        return str(_original_serializer(app).loads(token, max_age=ORIGINAL_URL_SECONDS))
    except BadSignature:
        return None


def callback_signature(app: Flask, job_id: str) -> str:
    """The HMAC of a job id that authenticates Upsampler's callback for that job."""
    return _callback_signer(app).get_signature(job_id).decode("ascii")


def callback_url(app: Flask, job_id: str) -> str:
    """Where Upsampler posts when the job's upscale ends."""
    base = app.config["PUBLIC_BASE_URL"]
    return f"{base}/webhooks/upsampler/{job_id}/{callback_signature(app, job_id)}"


def callback_is_authentic(app: Flask, job_id: str, signature: str) -> bool:
    """Whether a callback's signature was made for this job id (constant-time)."""
    return _callback_signer(app).verify_signature(job_id, signature)


def accept_callback(app: Flask, job_id: str, signature: str) -> bool:
    """An authentic callback for a job Upsampler has: queue a status check (the body is never
    trusted). False when the signature or the job is not ours."""
    if not callback_is_authentic(app, job_id, signature):
        return False
    job = get_job(job_id)
    if job is None or not job.upsampler_job_id:
        return False
    if job.status == "processing":
        enqueue_upsampler_check(job_id)
    log.info("job=%s upsampler callback received", job_id)
    return True


@dataclass(frozen=True)
class Original:
    """An original image in storage and its type."""

    stored: StoredObject
    mime_type: str


def original_for_token(app: Flask, token: str) -> Original | None:
    """The original behind a still-valid signed URL, while its job is being upscaled."""
    job_id = job_for_original_token(app, token)
    job = get_job(job_id) if job_id else None
    if job is None or job.attachment is None or job.status not in ("pending", "processing"):
        return None
    stored = backend(app).stat(job.attachment.file_path)
    return Original(stored, job.attachment.mime_type) if stored is not None else None
