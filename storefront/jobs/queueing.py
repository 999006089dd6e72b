"""Queueing a job's work on RQ: deterministic ids, explicit timeouts and retries, each once.

Emails go through the outbox (`storefront.jobs.outbox`): written down in a transaction, then
handed to RQ here.
"""

from __future__ import annotations

import datetime as dt
import logging

from flask import current_app
from redis.exceptions import RedisError
from rq import Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus

from storefront import logs, transactions
from storefront.jobs import outbox
from storefront.jobs.estimates import engine_for, neural_seconds
from storefront.jobs.state import get_job
from storefront.queues import DEFAULT_QUEUE, SAMPLES_QUEUE, UPSCALE_QUEUE, get_queue
from storefront.transactions import AfterCommit

log = logging.getLogger("smi.fulfilment")

LIVE_STATUSES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
ENDED_BADLY = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
EMAIL_RETRY = Retry(max=8, interval=[5, 15, 30, 60, 120, 300, 600, 1200])


def processing_rq_id(job_id: str) -> str:
    """The deterministic RQ id of a job's upscale."""
    return f"upscale-{job_id}"


def _enqueue_once(
    queue_name: str,
    rq_id: str,
    func: str,
    args: tuple[str, ...],
    *,
    replaceable: set[JobStatus],
    **options: object,
) -> bool:
    """Enqueue under `rq_id`, unless an RQ job of that id exists in a state not `replaceable`."""
    queue = get_queue(current_app._get_current_object(), queue_name)  # type: ignore[attr-defined]
    try:
        try:
            # Most ids are new: RQ's unique enqueue checks and saves atomically, in one round
            # trip. Only an id that exists is looked at, and replaced if its state allows.
            queue.enqueue(func, *args, job_id=rq_id, unique=True, meta=logs.rq_meta(), **options)
        except DuplicateJobError:
            try:
                existing = RQJob.fetch(rq_id, connection=queue.connection)
            except NoSuchJobError:
                existing = None  # it expired or was deleted just now
            if existing is not None:
                status = existing.get_status()
                if status == JobStatus.QUEUED and queue.get_job_position(rq_id) is None:
                    # A worker took it off the queue and died before it marked it started: no
                    # one will ever run it. Queued again; a run that overlaps finds the work
                    # claimed.
                    log.warning("rq_job=%s was queued but is in no queue: queued again", rq_id)
                elif status not in replaceable:
                    log.info("rq_job=%s is already %s", rq_id, status)
                    return False
                existing.delete()
            queue.enqueue(func, *args, job_id=rq_id, unique=True, meta=logs.rq_meta(), **options)
    except DuplicateJobError:
        log.info("rq_job=%s was queued by someone else just now", rq_id)
        return False
    except RedisError as exc:
        # What was committed stays; the sweeper queues it once Redis is back.
        log.warning("rq_job=%s could not be queued (%s); the sweeper will retry", rq_id, exc)
        return False
    log.info("rq_job=%s queued on %s", rq_id, queue_name)
    return True


def processing_timeout(job_id: str, size: tuple[int | None, int | None, int] | None = None) -> int:
    """Seconds an upscale may run: the setting, or three times the neural engine's estimate.

    `size` is the job's (width, height, factor) when the caller has them (they never change)."""
    config = current_app.config
    timeout = int(config["PROCESSING_TIMEOUT_MINUTES"]) * 60
    if size is None:
        job = get_job(job_id)
        if job is None:
            return timeout
        size = (job.image_width, job.image_height, job.factor)
    width, height, factor = size
    if not width or not height:
        return timeout
    if engine_for(width, height, factor, config) == "neural":
        timeout = max(timeout, int(3 * neural_seconds(width, height, factor)))
    return timeout


def enqueue_processing(
    job_id: str, *, replace_live: bool = False, timeout: int | None = None
) -> bool:
    """Put the job's upscale on the `upscale` queue, unless it is already there or running.

    `replace_live` is for the sweeper, when the worker running it has died. `timeout` is the
    job's `processing_timeout` when the caller knows it already.
    """
    return _enqueue_once(
        UPSCALE_QUEUE,
        processing_rq_id(job_id),
        "worker.tasks.process_job",
        (job_id,),
        # The database says whether work remains; a finished RQ record is only history.
        replaceable=ENDED_BADLY | {JobStatus.FINISHED} | (LIVE_STATUSES if replace_live else set()),
        job_timeout=timeout if timeout is not None else processing_timeout(job_id),
        retry=Retry(max=3, interval=[10, 60, 300]),
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
    )


def queue_email(kind: str, job_id: str, *, unique: bool = True) -> AfterCommit:
    """Write one of a job's emails into the outbox, in the caller's transaction; return the
    after-commit action that hands it to RQ. Once per kind and job when `unique`."""
    outbox_id = outbox.add(kind, job_id, once=unique)
    if outbox_id is None:
        return lambda: False  # written down before: that row is on its way already
    return lambda: hand_over(outbox_id, written=(kind, job_id))


def enqueue_email(kind: str, job_id: str, *, unique: bool = True) -> bool:
    """Queue one of a job's emails now: into the outbox in a transaction of its own, then to RQ.

    For after-commit actions, with nothing else uncommitted; a service changing state writes the
    email in its own transaction with `queue_email` instead.
    """
    handover = queue_email(kind, job_id, unique=unique)
    transactions.commit()
    return bool(handover())


def hand_over(outbox_id: int, *, written: tuple[str, str] | None = None) -> bool:
    """Give an outbox row's email to RQ, unless RQ has it already or it was sent; commits.

    `written` is the row's (kind, job id) when the caller wrote it in the transaction it has
    just committed: no one else has handed it over or sent it yet, so it is not read again (the
    email task reads it, and does it once, anyway). Redis unreachable leaves the row as it is,
    for the sweeper to hand over later.
    """
    if written is None:
        row = outbox.get(outbox_id)
        if row is None or row.finished_at is not None:
            transactions.rollback()
            return False
        written = (row.kind, row.job_id)
    kind, job_id = written
    queued = _enqueue_once(
        DEFAULT_QUEUE,
        f"email-{kind}-{job_id}-{outbox_id}",
        "worker.tasks.send_job_email",
        (kind, job_id, str(outbox_id)),
        # The row says whether it was sent; an RQ record that ended, however, is only history.
        replaceable=ENDED_BADLY | {JobStatus.FINISHED},
        job_timeout=120,
        retry=EMAIL_RETRY,
        result_ttl=7 * 24 * 3600,
    )
    if not queued:
        transactions.rollback()
        return False
    outbox.mark_handed(outbox_id)
    transactions.commit()
    return True


def enqueue_upsampler_check(job_id: str, *, delay_seconds: int = 0, attempt: int = 0) -> bool:
    """Ask (now or later) how the job's Upsampler upscale is going, and act on the answer."""
    rq_id = (
        f"upsampler-check-{job_id}" if delay_seconds == 0 else f"upsampler-poll-{job_id}-{attempt}"
    )
    options: dict[str, object] = {
        "job_timeout": int(current_app.config["PROCESSING_TIMEOUT_MINUTES"]) * 60,
        "retry": Retry(max=3, interval=[15, 60, 180]),
        "result_ttl": 3600,
    }
    if delay_seconds == 0:
        return _enqueue_once(
            UPSCALE_QUEUE,
            rq_id,
            "worker.tasks.check_upsampler",
            (job_id, str(attempt)),
            replaceable=ENDED_BADLY | {JobStatus.FINISHED},
            **options,
        )
    queue = get_queue(current_app._get_current_object(), UPSCALE_QUEUE)  # type: ignore[attr-defined]
    try:
        queue.enqueue_in(
            dt.timedelta(seconds=delay_seconds),
            "worker.tasks.check_upsampler",
            job_id,
            str(attempt),
            job_id=rq_id,
            unique=True,
            meta=logs.rq_meta(),
            **options,
        )
    except DuplicateJobError:
        return False
    except RedisError as exc:
        log.warning("job=%s poll could not be scheduled (%s); the sweeper will", job_id, exc)
        return False
    return True


def sample_rq_id(attachment_id: int, resolution: str) -> str:
    """The deterministic RQ id of an image's sample at one resolution."""
    return f"sample-{attachment_id}-{resolution}"


def enqueue_sample(attachment_id: int, resolution: str) -> bool:
    """Put the making of a sample on the low-priority `samples` queue, unless it is there already.

    The task finds out itself which engine and which original the sample is for, so one RQ job
    per image and resolution covers any change. A failed one is left alone until its record
    expires (an hour), so a page viewed often does not queue a sample that cannot be made.
    """
    return _enqueue_once(
        SAMPLES_QUEUE,
        sample_rq_id(attachment_id, resolution),
        "worker.tasks.make_sample",
        (str(attachment_id), resolution),
        replaceable={JobStatus.FINISHED, JobStatus.STOPPED, JobStatus.CANCELED},
        job_timeout=600,
        retry=Retry(max=2, interval=[60, 600]),
        result_ttl=3600,
        failure_ttl=3600,
    )


def queue_after_payment(
    job_id: str, size: tuple[int | None, int | None, int] | None = None
) -> list[AfterCommit]:
    """In the payment's transaction: write the "payment received" email into the outbox; return
    the after-commit actions that queue the upscale and hand the email to RQ (`size`: as for
    `processing_timeout`)."""
    handover = queue_email("paid", job_id)
    timeout = processing_timeout(job_id, size)
    return [lambda: enqueue_processing(job_id, timeout=timeout), handover]


def after_payment(job_id: str) -> None:
    """Once a payment is committed: queue the upscale and the "payment received" email."""
    transactions.commit(*queue_after_payment(job_id))
