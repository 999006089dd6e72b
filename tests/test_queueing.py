"""Queueing a job's work once, on a real Redis: no duplicate, and nothing stranded."""

from __future__ import annotations

from flask import Flask
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus

from storefront.extensions import db
from storefront.jobs.queueing import enqueue_processing, processing_rq_id
from storefront.queues import UPSCALE_QUEUE, redis_connection
from tests.factories import make_attachment, make_job


def _paid_job(app: Flask) -> str:
    job = make_job(make_attachment(app), status="pending", payment_status="paid")
    db.session.commit()
    return job.job_id


def test_a_job_already_in_the_queue_is_not_queued_twice(app: Flask) -> None:
    job_id = _paid_job(app)
    queue = Queue(UPSCALE_QUEUE, connection=redis_connection(app))
    assert enqueue_processing(job_id) is True
    assert enqueue_processing(job_id) is False
    assert queue.job_ids == [processing_rq_id(job_id)]


def test_a_job_a_dead_worker_took_off_the_queue_is_queued_again(app: Flask) -> None:
    """RQ's worker pops the id, then marks the job started: one killed in between strands it,
    queued by its status but in no queue. The sweeper's next try must put it back."""
    job_id = _paid_job(app)
    redis = redis_connection(app)
    queue = Queue(UPSCALE_QUEUE, connection=redis)
    assert enqueue_processing(job_id) is True
    rq_id = processing_rq_id(job_id)
    redis.lrem(queue.key, 0, rq_id)  # what the dead worker's BLPOP did
    assert RQJob.fetch(rq_id, connection=redis).get_status() == JobStatus.QUEUED
    assert queue.job_ids == []

    assert enqueue_processing(job_id) is True
    assert queue.job_ids == [rq_id]
    assert RQJob.fetch(rq_id, connection=redis).args == (job_id,)
    assert enqueue_processing(job_id) is False  # and now it is not queued twice
    assert queue.job_ids == [rq_id]
