"""The system page's buttons on RQ's failed registry: requeue a failed RQ job, or delete it.

Each is one audited admin action; a form sent twice (its one-time id) acts once.
"""

from __future__ import annotations

from flask import Flask
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.registry import FailedJobRegistry

from storefront import transactions
from storefront.accounts.audit import already_done, log_action
from storefront.queues import redis_connection


class FailedJobRefused(RuntimeError):
    """The job cannot be requeued or deleted (gone, not failed, or Redis is down); the message
    says which, and nothing changed."""


class AlreadyDone(RuntimeError):
    """This form was sent before and acted on then."""


def _failed_job(app: Flask, rq_job_id: str) -> tuple[RQJob, FailedJobRegistry]:
    connection = redis_connection(app)
    try:
        job = RQJob.fetch(rq_job_id, connection=connection)
    except NoSuchJobError:
        raise FailedJobRefused(f"RQ job {rq_job_id} no longer exists.") from None
    registry = FailedJobRegistry(job.origin, connection=connection)
    if rq_job_id not in registry:
        raise FailedJobRefused(f"RQ job {rq_job_id} is not in the failed registry any more.")
    return job, registry


def requeue_failed(app: Flask, rq_job_id: str, admin: str, request_id: str | None) -> str:
    """Put a failed RQ job back on its queue; the message to show."""
    if already_done(request_id):
        raise AlreadyDone
    try:
        job, registry = _failed_job(app, rq_job_id)
        registry.requeue(job)
    except InvalidJobOperation:
        raise FailedJobRefused(f"RQ job {rq_job_id} left the failed registry meanwhile.") from None
    except RedisError as exc:
        raise FailedJobRefused(f"Redis is unreachable ({type(exc).__name__}).") from None
    log_action(admin, "rq_requeue", rq_job_id, f"{job.func_name} on {job.origin}", request_id)
    transactions.commit()
    return f"RQ job {rq_job_id} ({job.func_name}) is back on the {job.origin} queue."


def delete_failed(app: Flask, rq_job_id: str, admin: str, request_id: str | None) -> str:
    """Remove a failed RQ job from the registry and delete its record; the message to show."""
    if already_done(request_id):
        raise AlreadyDone
    try:
        job, registry = _failed_job(app, rq_job_id)
        registry.remove(job, delete_job=True)
    except RedisError as exc:
        raise FailedJobRefused(f"Redis is unreachable ({type(exc).__name__}).") from None
    log_action(admin, "rq_delete", rq_job_id, f"{job.func_name} on {job.origin}", request_id)
    transactions.commit()
    return f"RQ job {rq_job_id} ({job.func_name}) was deleted."
