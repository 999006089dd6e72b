"""The `/api/v1` subset of Upsampler's API (submit, status) and the `/results/...` file host."""

from __future__ import annotations

import hmac
import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, g, request, send_file
from werkzeug.wrappers import Response

from .context import runtime
from .processing import content_type
from .store import Obj

bp = Blueprint("api", __name__, url_prefix="/api/v1")
results_bp = Blueprint("results", __name__)

INPUT_IMAGE_TYPES = ("realism", "anime", "universal")
MAX_FACTOR = 16
_RESULT_NAME = re.compile(r"^(?P<id>[0-9a-f-]{36})(?P<compressed>-compressed)?\.(?P<ext>[a-z]+)$")


class ApiError(Exception):
    """An error answer: `{"error": message}` with an HTTP status."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers or {}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Return a JSON response."""
    return Response(
        json.dumps(body, indent=2) + "\n",
        status=status,
        headers=headers or {},
        mimetype="application/json",
    )


def error_response(error: ApiError) -> Response:
    """Return an error the way Upsampler shapes them: `{"error": "..."}`."""
    return json_response({"error": error.message}, error.status, error.headers)


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    return error_response(error)


# ----------------------------------------------------------------------------- before and after


@bp.before_request
def _outage_then_auth() -> Response | None:
    """Answer an armed failure first (as an outage would), then check the Bearer key."""
    state = runtime().state
    path = request.path[len(bp.url_prefix or "") :]
    rule = state.take_failure(path)
    if rule is not None:
        headers: dict[str, str] = {}
        retry_after = (
            rule.retry_after if rule.retry_after else ("1" if rule.status == 429 else None)
        )
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        default = "Too many requests" if rule.status == 429 else "Internal server error"
        g.note = f"armed failure {rule.status}"
        g.auth = "not-checked"
        return error_response(ApiError(rule.message or default, rule.status, headers))
    g.auth = _check_key(state.api_key)
    if g.auth == "missing":
        return error_response(ApiError("Missing API key", 401))
    if g.auth == "invalid":
        return error_response(ApiError("Invalid API key", 401))
    return None


def _check_key(api_key: str | None) -> str:
    header = request.headers.get("Authorization", "")
    if not api_key:
        return "not-required"
    if not header:
        return "missing"
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), api_key):
        return "invalid"
    return "ok"


@bp.after_request
def _record_call(response: Response) -> Response:
    """Record each submission and status call with the answer's status (never the key)."""
    state = runtime().state
    if request.endpoint == "api.precise_upscale":
        state.record(
            "submissions",
            {
                "status": response.status_code,
                "auth": g.get("auth"),
                "body": request.get_json(silent=True),
                "job_id": g.get("job_id"),
            },
        )
    elif request.endpoint == "api.job_status":
        state.record(
            "status_calls",
            {
                "status": response.status_code,
                "auth": g.get("auth"),
                "job_id": (request.view_args or {}).get("job_id"),
            },
        )
    return response


# ----------------------------------------------------------------------------- endpoints


def _number(data: Obj, name: str, low: float, high: float, *, required: bool = False) -> float:
    value = data.get(name)
    if value is None:
        if required:
            raise ApiError(f"'input.{name}' is required")
        return low
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(f"'input.{name}' must be a number")
    if not low <= value <= high:
        raise ApiError(f"'input.{name}' must be between {low:g} and {high:g}")
    return float(value)


def _http_url(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ApiError(f"'{name}' must be an http(s) URL")
    return value


@bp.post("/precise-upscale")
def precise_upscale() -> Response:
    """Queue a Precise Upscale job; answer the job object (IN_QUEUE)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError("The request body must be a JSON object")
    input_ = data.get("input")
    if not isinstance(input_, dict):
        raise ApiError("'input' is required and must be an object")
    _http_url(input_.get("imageUrl"), "input.imageUrl")
    _number(input_, "upscaleFactor", 1, MAX_FACTOR, required=True)
    _number(input_, "globalCreativity", 0, 10)
    _number(input_, "detail", 0, 10)
    image_type = input_.get("inputImageType")
    if image_type is not None and image_type not in INPUT_IMAGE_TYPES:
        raise ApiError("'input.inputImageType' must be one of " + ", ".join(INPUT_IMAGE_TYPES))
    webhook = data.get("webhook")
    if webhook is not None:
        _http_url(webhook, "webhook")
    rt = runtime()
    job = rt.state.new_job(dict(input_), webhook)
    g.job_id = job.id
    body = rt.state.job_object(job)  # before the thread starts: the answer is always IN_QUEUE
    rt.runner.start(job)
    if job.behaviour.answer_delay:
        rt.runner.pause(job.behaviour.answer_delay)  # the job runs; its answer is slow to come
    return json_response(body)


@bp.get("/status/<job_id>")
def job_status(job_id: str) -> Response:
    """Answer the job object for `job_id`."""
    state = runtime().state
    job = state.get(job_id)
    if job is None:
        raise ApiError("Job not found", 404)
    return json_response(state.job_object(job))


@results_bp.get("/results/<name>")
def result_file(name: str) -> Response:
    """Serve a finished job's result (`<id>.<ext>`) or compressed JPEG (`<id>-compressed.jpg`)."""
    state = runtime().state
    match = _RESULT_NAME.match(name)
    job = state.get(match.group("id")) if match else None
    kind = "compressed" if match and match.group("compressed") else "full"
    status = 404
    try:
        if match is None or job is None or job.status != "SUCCESS":
            return json_response({"error": "Not found"}, 404)
        path = job.compressed_path if kind == "compressed" else job.result_path
        ext = "jpg" if kind == "compressed" else job.result_ext
        if path is None or match.group("ext") != ext or not path.exists():
            return json_response({"error": "Not found"}, 404)
        if job.results_expire_at is not None and time.time() > job.results_expire_at:
            return json_response({"error": "This link has expired"}, 404)
        if job.behaviour.result_status != 200:
            status = job.behaviour.result_status
            return json_response({"error": "Result unavailable"}, status)
        status = 200
        mimetype = content_type(ext or "png")
        if job.behaviour.chunked:
            return Response(_stream(path), mimetype=mimetype, direct_passthrough=True)
        # send_file's headers around a generator body: werkzeug's server skips closing the body
        # when the client resets the connection (as the fetcher does on a result over its cap),
        # and send_file's open file would leak into a ResourceWarning in a later test.
        with send_file(path, mimetype=mimetype, conditional=False, max_age=0) as sent:
            return Response(_stream(path), headers=sent.headers, direct_passthrough=True)
    finally:
        state.record(
            "downloads",
            {
                "job_id": job.id if job else None,
                "file": kind,
                "name": name,
                "host": request.host,
                "status": status,
            },
        )


def _stream(path: Any) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(64 * 1024):
            yield chunk
