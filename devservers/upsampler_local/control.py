"""The `/_local` control surface: behaviours, outages, forged callbacks, records, reset."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from werkzeug.wrappers import Response

from .api import ApiError, error_response, json_response
from .context import runtime
from .store import coerce_behaviour

bp = Blueprint("control", __name__, url_prefix="/_local")


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    return error_response(error)


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if isinstance(data, dict):
        return data
    if request.content_length and request.mimetype == "application/json":
        raise ApiError("The request body must be a JSON object")
    return dict(request.form.items())


def _behaviour_fields(data: dict[str, Any]) -> dict[str, Any]:
    try:
        return coerce_behaviour(data)
    except ValueError as exc:
        raise ApiError(str(exc)) from None


def _int(data: dict[str, Any], name: str, default: int) -> int:
    try:
        return int(data.get(name, default))
    except (TypeError, ValueError):
        raise ApiError(f"{name} must be an integer") from None


@bp.get("/health")
def health() -> Response:
    """Say that the server is up."""
    return json_response({"ok": True})


@bp.get("/state")
def state_snapshot() -> Response:
    """Return every job, the behaviours, armed failures and the records."""
    return json_response(runtime().state.snapshot())


@bp.get("/requests")
def recorded_requests() -> Response:
    """Return the recorded submissions, status calls, callback attempts and downloads."""
    return json_response(runtime().state.requests_snapshot())


@bp.get("/jobs")
def list_jobs() -> Response:
    """List the jobs, oldest first, with what the server knows of them."""
    state = runtime().state
    with state.lock:
        return json_response({"data": [job.summary() for job in state.jobs.values()]})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """Return one job: its summary and the object the API answers."""
    state = runtime().state
    job = state.get(job_id)
    if job is None:
        raise ApiError("Job not found", 404)
    return json_response({**job.summary(), "object": state.job_object(job)})


@bp.get("/behaviour")
def get_behaviour() -> Response:
    """Return the server's default behaviour and those armed for the next jobs."""
    state = runtime().state
    with state.lock:
        return json_response(
            {
                "behaviour": state.default_behaviour.to_dict(),
                "next_job": [dict(b) for b in state.next_behaviours],
            }
        )


@bp.post("/behaviour")
def set_behaviour() -> Response:
    """Change the server's default behaviour (JSON fields of `Behaviour`)."""
    behaviour = runtime().state.set_behaviour(**_behaviour_fields(_body()))
    return json_response({"behaviour": behaviour.to_dict()})


@bp.post("/next-job")
def next_job() -> Response:
    """Apply these behaviour fields to the next submission only (calls queue up)."""
    fields = _behaviour_fields(_body())
    armed = runtime().state.arm_next(**fields)
    return json_response({"armed": armed, "fields": fields})


@bp.post("/fail-next")
def fail_next() -> Response:
    """Make the next `count` API calls (optionally only under `path`) answer `status`."""
    data = _body()
    status = _int(data, "status", 500)
    count = _int(data, "count", 1)
    if not 400 <= status <= 599:
        raise ApiError("status must be an HTTP error status (400-599)")
    if count < 1:
        raise ApiError("count must be at least 1")
    retry_after = data.get("retry_after")
    path = data.get("path")
    message = data.get("message")
    rule = runtime().state.arm_failure(
        status,
        count,
        retry_after=str(retry_after) if retry_after not in (None, "") else None,
        path=str(path) if path else None,
        message=str(message) if message else None,
    )
    return json_response(rule.to_dict())


@bp.post("/jobs/<job_id>/callback")
def send_callback(job_id: str) -> Response:
    """Post a callback now: this job's body (or JSON `body`, plus `overrides`) to its webhook,
    to the webhook of job `to_job`, or to `url`; answer the delivery record."""
    data = _body()
    rt = runtime()
    body = data.get("body")
    overrides = data.get("overrides")
    if body is not None and not isinstance(body, dict):
        raise ApiError("body must be an object")
    if overrides is not None and not isinstance(overrides, dict):
        raise ApiError("overrides must be an object")
    try:
        record = rt.runner.send_callback(
            job_id,
            to_job=data.get("to_job") or None,
            url=data.get("url") or None,
            body=body,
            overrides=overrides,
        )
    except LookupError as exc:
        raise ApiError(str(exc), 404) from None
    except ValueError as exc:
        raise ApiError(str(exc)) from None
    return json_response(record)


@bp.post("/jobs/<job_id>/release")
def release(job_id: str) -> Response:
    """Let a job held by the `hold` behaviour finish."""
    job = runtime().state.get(job_id)
    if job is None:
        raise ApiError("Job not found", 404)
    job.released.set()
    return json_response({"released": job_id})


@bp.post("/jobs/<job_id>/expire-results")
def expire_results(job_id: str) -> Response:
    """Make a job's result URLs answer 404 from now on, as after their 3 hours."""
    state = runtime().state
    job = state.get(job_id)
    if job is None:
        raise ApiError("Job not found", 404)
    state.update(job, results_expire_at=0.0)
    return json_response({"expired": job_id})


@bp.get("/idle")
def idle() -> Response:
    """Wait (up to `?timeout=` seconds, default 10) until no job runs and no callback is sent."""
    try:
        timeout = float(request.args.get("timeout", "10"))
    except ValueError:
        raise ApiError("timeout must be a number") from None
    return json_response({"idle": runtime().runner.wait_idle(min(timeout, 60.0))})


@bp.post("/reset")
def reset() -> Response:
    """Forget every job, record, armed failure and next-job behaviour."""
    runtime().state.reset()
    return json_response({"reset": True})
