"""Upscaling through Upsampler.com: submit, then act on its status (asked, never taken on trust)."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from pathlib import Path

from flask import Flask, current_app
from redis.exceptions import LockError, RedisError

from storefront import settings
from storefront.jobs import metrics
from storefront.jobs.outcomes import (
    abandon_submission,
    begin_submission,
    complete_job,
    fail_job,
    record_submission,
)
from storefront.jobs.queueing import enqueue_upsampler_check
from storefront.jobs.state import get_job
from storefront.jobs.upsampler_links import callback_url, original_url
from storefront.models import Job, utcnow
from storefront.queues import redis_connection
from worker.engines.base import PermanentUpscaleError
from worker.engines.imaging import UnsupportedImage
from worker.output import WrongSize, write_output
from worker.upsampler_client import (
    UpsamplerClient,
    UpsamplerJob,
    UpsamplerOutcomeUnknown,
    UpsamplerProtocolError,
    UpsamplerRequestError,
    UpsamplerResultRejected,
    UpsamplerTransientError,
    fetch_result,
)

log = logging.getLogger("smi.upsampler")

# Why a job whose submission may have reached Upsampler unrecorded is failed, not sent again.
UNCERTAIN = (
    "Upsampler may have received this job, but its answer was lost; it is not sent again, so "
    "it is never paid for twice"
)
# How long the provider job's id is kept in Redis, should the database not record it.
NOTE_SECONDS = 2 * 24 * 3600

# Growing waits between status checks when no callback comes, in units of UPSAMPLER_POLL_SECONDS
# (30 s by default: 30 s, 1, 2, 4, then every 5 minutes).
POLL_STEPS = (1, 2, 4, 8, 10)


def poll_delay(attempt: int) -> int:
    """Seconds to wait before status check number `attempt` (1-based)."""
    step = POLL_STEPS[min(attempt, len(POLL_STEPS)) - 1]
    return step * int(current_app.config["UPSAMPLER_POLL_SECONDS"])


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined]


def client(app: Flask) -> UpsamplerClient:
    """An Upsampler client from the app's settings."""
    key = app.config.get("UPSAMPLER_API_KEY")
    if not key:
        raise PermanentUpscaleError("UPSAMPLER_API_KEY is not set")
    return UpsamplerClient(key, app.config["UPSAMPLER_API_BASE"])


def input_type(job: Job) -> str:
    """The `inputImageType` Upsampler wants: the shop's setting (realism for photos)."""
    return str(current_app.config["UPSAMPLER_INPUT_TYPE"])


def submit(job: Job) -> str:
    """Send a claimed job to Upsampler once, however often this runs; then poll as a safety net.

    The submission is opened (a key committed) before the API call. A run that finds one open
    never sends it again (Upsampler has no idempotency key: that could start and charge a
    second job): it takes up the provider job an earlier attempt noted, or fails and refunds.
    """
    key = begin_submission(job.job_id)
    if key is None:
        return _resume(job.job_id)
    app = _app()
    with client(app) as api:
        try:
            provider_job = api.submit(
                original_url(app, job.job_id),
                job.factor,
                input_type(job),
                callback_url(app, job.job_id),
                creativity=int(app.config["UPSAMPLER_CREATIVITY"]),
                detail=int(app.config["UPSAMPLER_DETAIL"]),
            )
        except UpsamplerRequestError as exc:
            raise PermanentUpscaleError(f"Upsampler refused the job: {exc}") from exc
        except (UpsamplerOutcomeUnknown, UpsamplerProtocolError) as exc:
            fail_job(job.job_id, f"{UNCERTAIN} ({exc})")
            return "failed"
        except UpsamplerTransientError:
            abandon_submission(job.job_id, key)  # it never reached Upsampler: a retry may send it
            raise
    _note_provider_job(job.job_id, key, provider_job.id)
    return _recorded(job.job_id, provider_job, key)


def _note_key(job_id: str, key: str) -> str:
    return f"smi:upsampler-submission:{job_id}:{key}"


def _note_provider_job(job_id: str, key: str, provider_id: str) -> None:
    """Note the provider job's id in Redis at once: if the database cannot record it (a crash,
    an outage), the next attempt takes it up from here instead of sending the job again."""
    try:
        redis_connection(_app()).set(_note_key(job_id, key), provider_id, ex=NOTE_SECONDS)
    except RedisError as exc:
        log.warning("job=%s Upsampler job id not noted in Redis: %s", job_id, exc)


def _noted_provider_job(job_id: str, key: str) -> str | None:
    """The provider job id noted for this submission, if any."""
    value = redis_connection(_app()).get(_note_key(job_id, key))
    return value.decode() if isinstance(value, bytes) else value


def _recorded(job_id: str, provider_job: UpsamplerJob, key: str) -> str:
    """Record the provider job for submission `key`; go on as its status says."""
    if not record_submission(job_id, provider_job.id, poll_delay(1), key):
        return "no longer processing"
    if provider_job.failed:
        return check(job_id)
    return "submitted"


def _resume(job_id: str) -> str:
    """This run sent the job already (or may have): take up its provider job, never send again."""
    job = get_job(job_id)
    if job is None or job.status != "processing":
        return "nothing to do"
    if job.upsampler_job_id:
        log.info("job=%s already with Upsampler as %s", job_id, job.upsampler_job_id)
        return check(job_id, attempt=1)
    if not job.upsampler_submission_key:
        return "nothing to do"
    provider_id = _noted_provider_job(job_id, job.upsampler_submission_key)
    if provider_id is None:
        fail_job(job_id, f"{UNCERTAIN} (an earlier attempt stopped before recording it)")
        return "failed"
    log.info("job=%s takes up Upsampler job %s, sent by an earlier attempt", job_id, provider_id)
    with client(_app()) as api:
        try:
            provider_job = api.status(provider_id)
        except UpsamplerRequestError as exc:
            fail_job(job_id, f"{UNCERTAIN} (Upsampler does not know the job noted: {exc})")
            return "failed"
    return _recorded(job_id, provider_job, job.upsampler_submission_key)


def check(job_id: str, attempt: int = 0) -> str:
    """Ask Upsampler how the job is going and act once: collect, fail, or wait and ask again."""
    app = _app()
    job = get_job(job_id)
    if job is None or job.status != "processing" or not job.upsampler_job_id:
        return "nothing to do"
    with client(app) as api:
        provider_job = api.status(job.upsampler_job_id)
    if provider_job.succeeded:
        return _collect_once(job, provider_job, attempt)
    if provider_job.failed:
        fail_job(
            job_id, f"Upsampler could not upscale it: {provider_job.error or 'no reason given'}"
        )
        return "failed"
    started = job.processing_started_at or utcnow()
    timeout = dt.timedelta(minutes=int(app.config["UPSAMPLER_TIMEOUT_MINUTES"]))
    if utcnow() - started > timeout:
        fail_job(job_id, f"Upsampler did not finish within {timeout.seconds // 60} minutes")
        return "timed out"
    if attempt > 0:
        enqueue_upsampler_check(job_id, delay_seconds=poll_delay(attempt + 1), attempt=attempt + 1)
    return f"waiting ({provider_job.status})"


def _collect_once(job: Job, provider_job: UpsamplerJob, attempt: int) -> str:
    """Fetch the result under a lock, so a callback and a poll arriving together fetch it once.

    A check that finds the lock taken asks again later: the holder may have been killed, and its
    lock then lapses (900 s) with no one left to collect.
    """
    lock = redis_connection(_app()).lock(f"smi:collect:{job.job_id}", timeout=900, blocking=False)
    if not lock.acquire():
        enqueue_upsampler_check(
            job.job_id, delay_seconds=poll_delay(attempt + 1), attempt=attempt + 1
        )
        return "another check is collecting it"
    try:
        job = get_job(job.job_id) or job
        if job.status != "processing":
            return "already collected"
        return _collect(job, provider_job)
    finally:
        try:
            lock.release()
        except LockError:
            pass


def _collect(job: Job, provider_job: UpsamplerJob) -> str:
    """Fetch the result through the output writer (hosts, size cap, pixel size checked)."""
    app = _app()
    assert provider_job.image_url
    suffix = Path(provider_job.image_url.split("?", 1)[0]).suffix.lower()
    suffix = suffix if suffix in (".png", ".jpg", ".jpeg", ".webp") else ".png"

    def fetch(temporary: Path) -> None:
        fetch_result(
            provider_job.image_url or "",
            temporary,
            allowed_hosts=app.config["UPSAMPLER_RESULT_HOSTS"],
            max_bytes=int(app.config["UPSAMPLER_MAX_RESULT_MB"]) * 1024 * 1024,
        )

    try:
        final = write_output(job, suffix, fetch, tolerance=1)
    except UpsamplerResultRejected as exc:
        fail_job(job.job_id, f"Upsampler's result was refused: {exc}")
        return "failed"
    except WrongSize as exc:
        fail_job(job.job_id, f"Upsampler's result: {exc}")
        return "failed"
    except UnsupportedImage as exc:
        fail_job(
            job.job_id, f"Upsampler's result is {exc.found}: only JPEG, PNG or WebP is delivered"
        )
        return "failed"
    except PermanentUpscaleError:
        fail_job(job.job_id, "Upsampler's result is not an image")
        return "failed"
    credits = int(provider_job.credit_cost or 0)
    cost = (Decimal(credits) * settings.get("COST_PER_CREDIT")).quantize(Decimal("0.01"))
    seconds = (utcnow() - (job.upsampler_submitted_at or utcnow())).total_seconds()
    metrics.observe(metrics.UPSCALE_SECONDS, seconds, engine="upsampler", resolution=job.resolution)
    return complete_job(job, final, credits_used=credits, cost=cost)
