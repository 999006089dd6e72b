"""The email outbox: an email is written in the transaction that needs it, so Redis being down or
losing its data never loses it; the sweeper hands it over again, a worker sends it once; and a
fresh link leaves the buyer's current link working until the new one is issued."""

from __future__ import annotations

import datetime as dt
import re

from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, SimpleWorker
from sqlalchemy import select

from devservers.smtp_sink import SinkHandler, text_of
from storefront.extensions import db
from storefront.jobs.delivery import new_token
from storefront.jobs.emails import deliver
from storefront.jobs.outcomes import complete_job
from storefront.jobs.queueing import after_payment, hand_over
from storefront.jobs.recovery import sweep
from storefront.models import EmailOutbox, Job, utcnow
from storefront.storage import backend
from tests.admin_helpers import completed_job
from tests.factories import make_attachment, make_job, store_bytes
from worker.context import use_app

LINK = re.compile(r"/download/([0-9a-f]{64})")


def _redis_down(app: Flask) -> None:
    """The app's Redis stops answering (the pattern of test_fulfilment)."""
    app.extensions["smi_redis"] = Redis(
        port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )


def _redis_back(app: Flask) -> None:
    del app.extensions["smi_redis"]


def _send_queued_emails(app: Flask, redis_url: str) -> None:
    """A real RQ worker, in this process, runs every email task queued now."""
    connection = Redis.from_url(redis_url)
    use_app(app)
    try:
        SimpleWorker([Queue("default", connection=connection)], connection=connection).work(
            burst=True
        )
    finally:
        use_app(None)
        connection.close()


def _completed_with_link(app: Flask, email: str) -> tuple[Job, str]:
    """A delivered job whose "ready" email went out, and the token of its working link."""
    job = completed_job(app, email=email, email_sent=True)
    token, digest = new_token()
    job.download_token = digest
    db.session.commit()
    return job, token


def _outbox(job_id: str) -> list[EmailOutbox]:
    db.session.expire_all()
    query = select(EmailOutbox).where(EmailOutbox.job_id == job_id).order_by(EmailOutbox.id)
    return list(db.session.scalars(query))


def _ask_for_a_fresh_link(client: FlaskClient, job: Job) -> None:
    answer = client.post("/download/resend", data={"email": job.email, "job_id": job.job_id})
    assert answer.status_code == 200
    assert "a fresh link is on its way" in answer.get_data(as_text=True)


def _link_in(mail: object) -> str:
    found = LINK.search(text_of(mail))  # type: ignore[arg-type]
    assert found is not None
    return found.group(1)


def test_a_fresh_link_asked_for_while_redis_is_down_is_sent_once_it_is_back(
    app: Flask, client: FlaskClient, smtp_sink: SinkHandler, redis_url: str
) -> None:
    job, old = _completed_with_link(app, "ida@example.com")
    _redis_down(app)
    _ask_for_a_fresh_link(client, job)
    _ask_for_a_fresh_link(client, job)  # nothing seems to come, so the buyer asks again
    # Nothing could be queued, yet the buyer keeps a link that works, and the emails are written.
    assert client.get(f"/download/{old}").status_code == 200
    rows = _outbox(job.job_id)
    assert [(row.kind, row.handed_at, row.finished_at) for row in rows] == [
        ("link", None, None)
    ] * 2

    _redis_back(app)
    assert sweep(now=utcnow() + dt.timedelta(minutes=5)).emails == [job.job_id] * 2
    _send_queued_emails(app, redis_url)
    # One email, with the last link asked for.
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    assert mail["To"] == "ida@example.com"
    new = _link_in(mail)
    assert client.get(f"/download/{new}").status_code == 200
    assert client.get(f"/download/{old}").status_code == 404  # once the new one is out
    assert [row.outcome for row in _outbox(job.job_id)] == [
        "superseded by a later fresh link",
        "sent",
    ]

    # Sent is sent: the sweeper hands nothing over again, and no worker sends it twice.
    assert sweep(now=utcnow() + dt.timedelta(hours=2)).emails == []
    _send_queued_emails(app, redis_url)
    assert len(smtp_sink.messages) == 1
    assert client.get(f"/download/{new}").status_code == 200


def test_an_email_redis_lost_after_the_handover_is_handed_over_again(
    app: Flask, client: FlaskClient, smtp_sink: SinkHandler, redis_url: str
) -> None:
    job, old = _completed_with_link(app, "jo@example.com")
    _ask_for_a_fresh_link(client, job)
    (row,) = _outbox(job.job_id)
    assert row.handed_at is not None and row.handovers == 1
    # Redis restarts without its data (as `make run`'s does): the queued email is gone.
    connection = Redis.from_url(redis_url)
    connection.flushall()
    connection.close()
    assert client.get(f"/download/{old}").status_code == 200

    assert sweep(now=utcnow() + dt.timedelta(minutes=5)).emails == [job.job_id]
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    assert client.get(f"/download/{_link_in(mail)}").status_code == 200
    assert client.get(f"/download/{old}").status_code == 404
    (row,) = _outbox(job.job_id)
    assert (row.handovers, row.outcome) == (2, "sent")


def test_an_outbox_email_is_sent_once_however_often_it_is_handed_over(
    app: Flask, client: FlaskClient, smtp_sink: SinkHandler, redis_url: str
) -> None:
    job, _old = _completed_with_link(app, "kim@example.com")
    _ask_for_a_fresh_link(client, job)
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    sent_link = _link_in(mail)
    (row,) = _outbox(job.job_id)

    assert hand_over(row.id) is False
    # A task for the same row that runs again anyway (RQ lost its record of the first run).
    assert deliver("link", job.job_id, str(row.id)) == "already sent"
    _send_queued_emails(app, redis_url)
    assert len(smtp_sink.messages) == 1
    # The link that went out still works: no new token replaced it.
    assert client.get(f"/download/{sent_link}").status_code == 200


def test_an_expired_link_does_not_come_back_to_life_with_the_fresh_period(
    app: Flask, client: FlaskClient, smtp_sink: SinkHandler, redis_url: str
) -> None:
    job, old = _completed_with_link(app, "lu@example.com")
    job.download_expires_at = utcnow() - dt.timedelta(minutes=1)
    db.session.commit()
    assert client.get(f"/download/{old}").status_code == 410
    _redis_down(app)
    _ask_for_a_fresh_link(client, job)
    assert client.get(f"/download/{old}").status_code == 404
    _redis_back(app)
    sweep(now=utcnow() + dt.timedelta(minutes=5))
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    assert client.get(f"/download/{_link_in(mail)}").status_code == 200


def test_the_payment_email_survives_redis_being_down_after_the_payment(
    app: Flask, smtp_sink: SinkHandler, redis_url: str
) -> None:
    attachment = make_attachment(app)
    job = make_job(
        attachment,
        status="pending",
        payment_status="paid",
        paid_at=utcnow() - dt.timedelta(minutes=2),
        stripe_payment_intent_id="pi_paid_while_redis_was_down",
        email="mo@example.com",
    )
    db.session.commit()
    _redis_down(app)
    after_payment(job.job_id)  # what the webhook runs once the payment is committed
    (row,) = _outbox(job.job_id)
    assert (row.kind, row.handed_at) == ("paid", None)

    _redis_back(app)
    report = sweep(now=utcnow() + dt.timedelta(minutes=5))
    assert report.emails == [job.job_id] and report.queued == [job.job_id]
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    assert mail["To"] == "mo@example.com" and "Payment received" in str(mail["Subject"])


def test_the_ready_email_is_written_in_the_transaction_that_completes_the_job(
    app: Flask, client: FlaskClient, smtp_sink: SinkHandler, redis_url: str
) -> None:
    attachment = make_attachment(app)
    job = make_job(
        attachment,
        status="processing",
        payment_status="paid",
        paid_at=utcnow() - dt.timedelta(minutes=5),
        processing_started_at=utcnow() - dt.timedelta(minutes=1),
        email="ned@example.com",
    )
    db.session.commit()
    key = f"deliveries/{job.job_id}/out.jpg"
    store_bytes(app, key, b"upscaled")
    output = backend(app).stat(key)
    assert output is not None
    _redis_down(app)
    assert complete_job(job, output) == "completed"
    assert [(row.kind, row.handed_at) for row in _outbox(job.job_id)] == [("ready", None)]

    _redis_back(app)
    # Long before the sweeper's rule for "ready" emails never sent (10 minutes) would look.
    assert sweep(now=utcnow() + dt.timedelta(minutes=2)).emails == [job.job_id]
    _send_queued_emails(app, redis_url)
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    assert client.get(f"/download/{_link_in(mail)}").status_code == 200
