"""Originals behind signed, expiring URLs, for the upscaling provider to fetch."""

from __future__ import annotations

from flask import Blueprint, abort, current_app
from flask.typing import ResponseReturnValue

from storefront.jobs.upsampler_links import original_for_token
from storefront.web.stored_files import send_stored

bp = Blueprint("media", __name__)


@bp.get("/originals/<token>")
def original(token: str) -> ResponseReturnValue:
    """The original image of a job, while the signed token is valid; 404 otherwise."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    found = original_for_token(app, token)
    if found is None:
        abort(404)
    response = send_stored(found.stored, found.mime_type, max_age=0)
    response.headers["Cache-Control"] = "no-store"
    return response
