"""Error pages a person can act on, on the site's base layout."""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, render_template
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_limiter import RateLimitExceeded
from flask_wtf.csrf import CSRFError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException, InternalServerError

from storefront import error_tracking
from storefront.extensions import db, limiter
from storefront.storage import NotInStorage, StorageError

log = logging.getLogger("smi.errors")

MESSAGES = {
    400: (_l("That request didn't make sense"), _l("Something in it was missing or malformed.")),
    403: (_l("You can't do that here"), _l("This page or action isn't open to you.")),
    404: (_l("We couldn't find that page"), _l("The link may be mistyped, or the item is gone.")),
    405: (
        _l("That isn't how this page works"),
        _l("Try going back and using the buttons on the page."),
    ),
    410: (_l("This link has expired"), _l("It worked once, but its time is up.")),
    413: (_l("That file is too large"), _l("Try a smaller one.")),
    416: (
        _l("That part of the file isn't there"),
        _l("Start the download again from the beginning."),
    ),
    429: (
        _l("Slow down a little"),
        _l("Too many requests in a short time. Wait a minute and try again."),
    ),
    500: (
        _l("Something went wrong on our side"),
        _l("We've noted it. Please try again in a moment."),
    ),
    503: (_l("We're briefly unavailable"), _l("Please try again in a moment.")),
}


def render_error(status: int, detail: str | None = None) -> tuple[str, int]:
    """Render the error page for `status`, with an optional sentence saying what to do."""
    title, hint = MESSAGES.get(status, MESSAGES[500])
    return render_template(
        "errors/error.html", status=status, title=str(title), hint=str(hint), detail=detail
    ), status


def _retry_after(error: RateLimitExceeded) -> int:
    """Seconds until the window of the limit that was exceeded ends."""
    window = error.limit.limit.get_expiry()
    current = limiter.current_limit
    try:
        wait = current.reset_at - time.time() if current is not None else window
    except RedisError:
        wait = window
    return max(1, min(window, math.ceil(wait)))


def register_error_handlers(app: Flask) -> None:
    """Route every HTTP error and unhandled exception to a friendly page."""

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> tuple[str, int]:
        return render_error(400, _("The form had expired. Go back, reload the page and try again."))

    @app.errorhandler(RateLimitExceeded)
    def rate_limited(error: RateLimitExceeded) -> ResponseReturnValue:
        body, status = render_error(429, error.description)
        return body, status, {"Retry-After": str(_retry_after(error))}

    @app.errorhandler(StorageError)
    def storage_down(error: StorageError) -> ResponseReturnValue:
        db.session.rollback()
        if isinstance(error, NotInStorage):
            log.error("a stored file is missing: %s", error)
            return render_error(404)
        log.error("storage unavailable: %s", error)
        body, status = render_error(503, _("Our file storage isn't answering just now."))
        return body, status, {"Retry-After": "60"}

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[str, int]:
        return render_error(error.code or 500)

    @app.errorhandler(Exception)
    def unhandled(error: Exception) -> tuple[str, int]:
        # The failed request may have left the session mid-transaction.
        db.session.rollback()
        error_tracking.capture_unhandled(error)  # its log line below is then not sent again
        log.exception("unhandled error: %s", type(error).__name__)
        return render_error(InternalServerError.code)
