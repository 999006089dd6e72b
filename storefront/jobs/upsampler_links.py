"""What the web side does for Upsampler.com: signed URLs of originals, and its callbacks."""

from __future__ import annotations

import logging

from flask import Flask
from itsdangerous import BadSignature, Signer, URLSafeTimedSerializer

log = logging.getLogger("smi.provider")

ORIGINAL_URL_SECONDS = 4 * 3600


def _original_serializer(app: Flask) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(app.config["SECRET_KEY"], salt="smi-upsampler-original")


def _callback_signer(app: Flask) -> Signer:
    return Signer(app.config["SECRET_KEY"], salt="smi-upsampler-callback")


def original_url(app: Flask, job_id: str) -> str:
    """A URL of the job's original that only works for a few hours, for the provider to fetch."""
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
