"""Download links from the buyer's email: a landing page, the file itself, and fresh links."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    request,
    send_file,
)
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext as _l
from werkzeug.http import parse_date

from storefront import settings
from storefront.extensions import limiter
from storefront.formatting import local_time
from storefront.jobs.delivery import (
    DownloadRequest,
    Link,
    LinkState,
    Served,
    download_filename,
    find_link,
    finish_download,
    record_download,
    requested_span,
    send_fresh_link,
)
from storefront.models import Job
from storefront.storage import Storage, StoredObject, backend
from storefront.web.forms import ResendForm

log = logging.getLogger("smi.downloads")

bp = Blueprint("downloads", __name__)

STATUS_OF = {
    LinkState.READY: 200,
    LinkState.UNKNOWN: 404,
    LinkState.EXPIRED: 410,
    LinkState.LIMIT_REACHED: 410,
    LinkState.REFUNDED: 410,
    LinkState.FILE_GONE: 410,
    LinkState.NOT_READY: 409,
}


def _render_link(link: Link, status: int | None = None) -> ResponseReturnValue:
    expires = None
    if link.job is not None:
        expires = local_time(link.job.download_expires_at, current_app.config["DISPLAY_TIMEZONE"])
    form = ResendForm(job_id=link.job.job_id if link.job else "")
    body = render_template(
        "downloads/landing.html", link=link, state=link.state.value, expires=expires, form=form
    )
    response = Response(body, status=status or STATUS_OF[link.state])
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/download/<token>")
def landing(token: str) -> ResponseReturnValue:
    """What the file is, its size, when the link expires, and a Download button.

    This GET changes nothing: mail scanners and link previews open links before people do.
    """
    return _render_link(find_link(token))


@bp.get("/download/<token>/file")
def file(token: str) -> ResponseReturnValue:
    """The file itself, with Range support; the link is charged the bytes it sends.

    A link whose downloads are used up may still finish an interrupted one: `record_download`
    refuses (410) only a response that would take it past DOWNLOAD_MAX_COUNT file sizes.
    """
    link = find_link(token)
    if link.state not in (LinkState.READY, LinkState.LIMIT_REACHED):
        return _render_link(link)
    job, stored = link.job, link.stored
    assert job is not None and stored is not None
    job_id = job.job_id
    storage = backend(current_app._get_current_object())  # type: ignore[attr-defined]
    path = storage.local_path(stored.key)
    accel = str(settings.get("DOWNLOAD_ACCEL_PREFIX") or "")
    if path is None:
        response, served = _redirected(job, stored, storage)
    elif accel:
        response, served = _handed_to_nginx(job, path, accel)
    else:
        response, served = _streamed(job, path)
    details = DownloadRequest(
        ip=request.remote_addr or "",
        user_agent=request.headers.get("User-Agent") or "",
        range_header=request.headers.get("Range", ""),
    )
    # What the app streams is logged as it closes, with the bytes that really went out.
    streamed = path is not None and not accel and served.length > 0
    if not record_download(job_id, details, served, streamed=streamed):
        response.close()
        return _render_link(Link(LinkState.LIMIT_REACHED, job))
    if streamed:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        response.response = SentCounter(
            response.response,  # type: ignore[arg-type]  # send_file's body is bytes
            lambda sent: finish_download(app, job_id, details, served, sent),
        )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    log.info("job=%s download status=%s bytes=%s", job_id, response.status_code, served.length)
    return response


def _streamed(job: Job, path: Path) -> tuple[Response, Served]:
    """The file sent by the app (Range, If-Range, ETag: send_file's), and the bytes it carries."""
    response = send_file(
        path,
        mimetype=_mimetype(path.suffix),
        as_attachment=True,
        download_name=download_filename(job),
        conditional=True,
        etag=True,
        max_age=0,
    )
    sends_body = request.method != "HEAD" and response.status_code in (200, 206)
    start = response.content_range.start if response.status_code == 206 else 0
    length = (response.content_length or 0) if sends_body else 0
    return response, Served(start or 0, length, path.stat().st_size)


def _redirected(job: Job, stored: StoredObject, storage: Storage) -> tuple[Response, Served]:
    """A redirect to a short-lived URL of the object, and the bytes that URL will send.

    The browser sends its Range header on to that URL, which honours it (one range, as nginx).
    """
    span: tuple[int, int] | None = (0, stored.size)
    if "Range" in request.headers:
        span = requested_span(request.headers["Range"], stored.size)
    if span is None:
        abort(416)
    url = storage.download_url(
        stored.key,
        int(current_app.config["DOWNLOAD_URL_SECONDS"]),
        filename=download_filename(job),
        content_type=_mimetype(Path(stored.key).suffix),
    )
    assert url is not None
    response = Response(status=302, headers={"Location": url})
    length = span[1] if request.method != "HEAD" else 0
    return response, Served(span[0], length, stored.size)


def _handed_to_nginx(job: Job, path: Path, prefix: str) -> tuple[Response, Served]:
    """An X-Accel-Redirect for nginx to send the file, and the bytes nginx will send.

    nginx honours Range itself, so the app reads it the same way: one range, else 416 (nginx
    would send several as one multipart answer); the whole file when If-Range does not match.
    """
    stat = path.stat()
    size = stat.st_size
    span: tuple[int, int] | None = (0, size)
    if "Range" in request.headers and _if_range_holds(size, stat.st_mtime):
        span = requested_span(request.headers["Range"], size)
    if span is None:
        abort(416)
    response = Response(status=200)
    response.headers["X-Accel-Redirect"] = f"{prefix.rstrip('/')}/{job.upscaled_file_path}"
    response.headers["Content-Type"] = _mimetype(path.suffix)
    response.headers["Content-Disposition"] = f'attachment; filename="{download_filename(job)}"'
    length = span[1] if request.method != "HEAD" else 0
    return response, Served(span[0], length, size)


def _if_range_holds(size: int, mtime: float) -> bool:
    """Whether nginx applies Range: no If-Range, or one naming its ETag or Last-Modified."""
    value = request.headers.get("If-Range", "")
    if not value:
        return True
    if value == f'"{int(mtime):x}-{size:x}"':  # nginx's ETag: mtime and size in hex
        return True
    date = parse_date(value)
    return date is not None and int(date.timestamp()) == int(mtime)


class SentCounter:
    """A response body that counts the bytes the server wrote and reports them when it closes.

    A chunk counts once the server asks for the next one or the body ends, so a chunk whose write
    failed when the buyer went away is not counted.
    """

    def __init__(self, body: Iterable[bytes], on_close: Callable[[int], None]) -> None:
        self._body = body
        self._chunks = iter(body)
        self._on_close = on_close
        self._sent = 0
        self._pending = 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self._sent += self._pending
        self._pending = 0
        chunk = next(self._chunks)
        self._pending = len(chunk)
        return chunk

    def close(self) -> None:
        """Close the file, then record what was sent (once: servers may close twice)."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        self._on_close(self._sent)


def _mimetype(suffix: str) -> str:
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}.get(
        suffix.lower(), "image/webp" if suffix.lower() == ".webp" else "application/octet-stream"
    )


TOO_MANY_RESENDS = _l(
    "That's a lot of requests for fresh links. Please wait an hour and try again."
)


def _too_many_resends() -> str:
    return str(TOO_MANY_RESENDS)


def email_limit_key(email: str) -> str:
    """An email address, lower-cased, as the key of a rate limit: an HMAC, so that the limiter
    never stores the address."""
    secret = str(current_app.config["SECRET_KEY"]).encode()
    normalised = email.strip().lower()
    return "email:" + hmac.new(secret, normalised.encode(), hashlib.sha256).hexdigest()


def _resend_email_key() -> str:
    """The email address the form asks about, as the key of a rate limit."""
    return email_limit_key(request.form.get("email") or "")


def _resends_per_email() -> str:
    return f"{int(settings.get('RESEND_PER_HOUR'))}/hour"


def _resends_per_client() -> str:
    # Several buyers can share an address (an office, a phone network): it gets more room.
    return f"{int(settings.get('RESEND_PER_HOUR')) * 4}/hour"


@bp.get("/download/resend")
def resend_form() -> ResponseReturnValue:
    """The form that asks for a fresh link."""
    form = ResendForm(job_id=request.args.get("order", ""))
    return render_template("downloads/resend.html", form=form, sent=False)


@bp.post("/download/resend")
@limiter.limit(_resends_per_email, key_func=_resend_email_key, error_message=_too_many_resends)
@limiter.limit(_resends_per_client, error_message=_too_many_resends)
def resend() -> ResponseReturnValue:
    """Mail a fresh link to an order's email; the answer says nothing about whether it matched.

    Limited to RESEND_PER_HOUR per email address asked about, and four times that per client.
    """
    form = ResendForm()
    if not form.validate():
        body = render_template("downloads/resend.html", form=form, sent=False)
        return body, 400
    send_fresh_link(form.email.data, form.job_id.data)
    return render_template("downloads/resend.html", form=form, sent=True)
