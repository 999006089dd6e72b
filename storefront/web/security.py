"""What every response says about its own safety, how large a request body each page takes, and
the signed session cookie.

`install(app)` puts them on the app: the headers on every response (one place for them, admin
pages included), the body limit before any other hook can read a body, and the session cookie's
signer made once.
"""

from __future__ import annotations

import io
from typing import IO, Any, cast

from flask import Flask, abort, current_app, request
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

# Scripts, styles, images and fetches from this site only, nothing inline, no plugins, never in a
# frame. No form-action: Buy posts here and is redirected on to Stripe's own page.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
HSTS = "max-age=31536000; includeSubDomains"

FORM_MAX_BYTES = 64 * 1024  # a buyer's form is a few short fields
ADMIN_FORM_MAX_BYTES = 1024 * 1024  # a post's text: 20,000 characters, percent-encoded
WEBHOOK_MAX_BYTES = 1024 * 1024  # a Stripe event is a few KiB
UPLOAD_ENVELOPE_BYTES = 64 * 1024  # the multipart boundaries and fields around an image


def install(app: Flask) -> None:
    """Limit request bodies, and add the headers to every response.

    Call it before the extensions are set up: hooks run in the order they were added, and the
    CSRF check and the rate limits read the form in theirs.
    """
    app.before_request(refuse_nul_in_url)
    app.before_request(limit_request_body)
    app.after_request(add_security_headers)
    app.session_interface = SessionCookies()


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie sessions, whose signer is made once per secret key (and fallbacks)
    instead of at each opening and each save of a session (about 0.2 ms each)."""

    _signer: tuple[tuple[Any, ...], URLSafeTimedSerializer | None] | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        """Flask's serializer for `app`'s keys, kept while they stay the same."""
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        kept = self._signer
        if kept is None or kept[0] != keys:
            kept = self._signer = (keys, super().get_signing_serializer(app))
        return kept[1]


def refuse_nul_in_url() -> None:
    """A NUL byte in the path or query names nothing of ours (and PostgreSQL refuses it): 404."""
    if "\x00" in request.path or "\x00" in request.query_string.decode("latin-1"):
        abort(404)


def body_limit(endpoint: str | None) -> int:
    """The largest request body, in bytes, that an endpoint accepts."""
    if endpoint == "admin.image_upload":
        return int(current_app.config["ADMIN_UPLOAD_MAX_BYTES"]) + UPLOAD_ENVELOPE_BYTES
    blueprint = (endpoint or "").partition(".")[0]
    if blueprint == "webhooks":
        return WEBHOOK_MAX_BYTES
    if blueprint == "admin" and endpoint != "admin.login":
        return ADMIN_FORM_MAX_BYTES
    return FORM_MAX_BYTES


def limit_request_body() -> None:
    """Refuse (413) a body larger than the endpoint takes, before any of it is read.

    A declared Content-Length is checked now; a body sent in chunks, while it is read, as soon
    as it goes past the limit.
    """
    limit = body_limit(request.endpoint)
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        abort(413)
    if request.content_length is None and "wsgi.input_terminated" in request.environ:
        # Werkzeug's own limit stops a whole-body read (a form, get_data) at the limit without
        # a word, as if the body ended there; this one says 413.
        request.stream = cast(IO[bytes], _ChunkedBody(request.environ["wsgi.input"], limit))


class _ChunkedBody(io.RawIOBase):
    """A body of no declared length, read up to `limit` bytes: one byte more is a 413."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(min(len(buffer), self._limit + 1 - self._read))
        self._read += len(data)
        if self._read > self._limit:
            raise RequestEntityTooLarge()
        buffer[: len(data)] = data
        return len(data)


def add_security_headers(response: Response) -> Response:
    """The headers every response carries; a view's own Referrer-Policy (downloads) is kept."""
    headers = response.headers
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers.setdefault("Referrer-Policy", "same-origin")
    if current_app.config["SMI_ENV"] == "production":
        headers["Strict-Transport-Security"] = HSTS
    return response
