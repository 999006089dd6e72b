"""Originals behind signed, expiring URLs, for the upscaling provider to fetch."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, send_file
from flask.typing import ResponseReturnValue

from storefront.jobs.state import get_job
from storefront.jobs.upsampler_links import job_for_original_token
from storefront.storage import resolve

bp = Blueprint("media", __name__)


@bp.get("/originals/<token>")
def original(token: str) -> ResponseReturnValue:
    """The original image of a job, while the signed token is valid; 404 otherwise."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    job_id = job_for_original_token(app, token)
    job = get_job(job_id) if job_id else None
    if job is None or job.attachment is None or job.status not in ("pending", "processing"):
        abort(404)
    path = resolve(app, job.attachment.file_path)
    if not path.is_file():
        abort(404)
    response = send_file(path, mimetype=job.attachment.mime_type, max_age=0)
    response.headers["Cache-Control"] = "no-store"
    return response
