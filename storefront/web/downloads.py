"""Download links from the buyer's email: a landing page, the file itself, and fresh links."""

from __future__ import annotations

import hashlib
import logging

from flask import Blueprint, Response, current_app, render_template, request, send_file
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError

from storefront.formatting import local_time
from storefront.jobs.delivery import (
    DownloadRequest,
    Link,
    LinkState,
    download_filename,
    find_link,
    record_download,
    send_fresh_link,
)
from storefront.queues import redis_connection
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
    """The file itself, with Range support; a download is counted once, not per range request."""
    link = find_link(token)
    if link.state is not LinkState.READY:
        return _render_link(link)
    job = link.job
    assert job is not None
    path = link.file_path()
    range_header = request.headers.get("Range", "")
    accel = current_app.config.get("DOWNLOAD_ACCEL_PREFIX") or ""
    if accel:
        response = Response(status=200)
        response.headers["X-Accel-Redirect"] = f"{accel.rstrip('/')}/{job.upscaled_file_path}"
        response.headers["Content-Type"] = _mimetype(path.suffix)
        response.headers["Content-Disposition"] = f'attachment; filename="{download_filename(job)}"'
    else:
        response = send_file(
            path,
            mimetype=_mimetype(path.suffix),
            as_attachment=True,
            download_name=download_filename(job),
            conditional=True,
            etag=True,
            max_age=0,
        )
    starts_download = response.status_code in (200, 206) and (
        response.status_code == 200
        or response.headers.get("Content-Range", "").startswith("bytes 0-")
    )
    # A resumed download (a range past byte 0) continues one already counted.
    allowed, counted = record_download(
        job.job_id,
        DownloadRequest(
            ip=request.remote_addr or "",
            user_agent=request.headers.get("User-Agent") or "",
            range_header=range_header,
        ),
        bytes_sent=int(response.headers.get("Content-Length") or 0),
        starts_download=starts_download and request.method == "GET",
    )
    if not allowed:
        response.close()
        return _render_link(Link(LinkState.LIMIT_REACHED, job))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    log.info("job=%s download status=%s counted=%s", job.job_id, response.status_code, counted)
    return response


def _mimetype(suffix: str) -> str:
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}.get(
        suffix.lower(), "image/webp" if suffix.lower() == ".webp" else "application/octet-stream"
    )


def _rate_limited(email: str) -> bool:
    """More fresh-link requests this hour, for this address or this IP, than allowed."""
    limit = int(current_app.config["RESEND_PER_HOUR"])
    keys = [
        "smi:resend:email:" + hashlib.sha256(email.strip().lower().encode()).hexdigest(),
        "smi:resend:ip:" + (request.remote_addr or "unknown"),
    ]
    try:
        connection = redis_connection(current_app._get_current_object())  # type: ignore[attr-defined]
        pipe = connection.pipeline()
        for key in keys:
            pipe.incr(key)
            pipe.expire(key, 3600, nx=True)
        counts = pipe.execute()[::2]
    except RedisError:
        log.warning("resend rate limit unavailable: Redis is down")
        return False
    email_count, ip_count = (int(count) for count in counts)
    # Several buyers can share an address (an office, a phone network): the IP gets more room.
    return email_count > limit or ip_count > limit * 4


@bp.get("/download/resend")
def resend_form() -> ResponseReturnValue:
    """The form that asks for a fresh link."""
    form = ResendForm(job_id=request.args.get("order", ""))
    return render_template("downloads/resend.html", form=form, sent=False)


@bp.post("/download/resend")
def resend() -> ResponseReturnValue:
    """Mail a fresh link to an order's email; the answer says nothing about whether it matched."""
    form = ResendForm()
    if not form.validate():
        body = render_template("downloads/resend.html", form=form, sent=False)
        return body, 400
    if _rate_limited(form.email.data):
        body = render_template("downloads/resend.html", form=form, sent=False, limited=True)
        return body, 429
    send_fresh_link(form.email.data, form.job_id.data)
    return render_template("downloads/resend.html", form=form, sent=True)
