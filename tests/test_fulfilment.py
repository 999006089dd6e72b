"""Paid jobs end delivered or refunded, on real parts: Redis, RQ worker processes, SMTP, Stripe."""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Callable
from decimal import Decimal
from email.message import EmailMessage

import pytest
import requests
from PIL import Image
from redis import Redis
from rq import Queue
from sqlalchemy import func, select

from devservers.smtp_sink import SinkHandler, text_of
from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.models import DownloadLog, Job, JobEvent, utcnow
from tests.conftest import LiveApp, WorkerProcess, wait_until
from tests.factories import make_attachment, resolve

pytestmark = pytest.mark.slow

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/download/([0-9a-f]{64}))")


def _image_size(source: object) -> tuple[int, int]:
    with Image.open(source) as image:  # type: ignore[arg-type]
        return image.size


def _buy_and_pay(
    live: LiveApp,
    stripe_local: LocalStripe,
    *,
    width: int = 120,
    height: int = 90,
    email: str = "buyer@example.com",
) -> Job:
    attachment = make_attachment(live.app, width=width, height=height, title="Harbour")
    db.session.commit()
    client = live.app.test_client()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": email}
    assert client.post("/checkout", data=data).status_code == 303
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
    assert job is not None
    stripe_local.pay(job.stripe_checkout_session_id)
    return job


def _fresh(job_id: str) -> Job:
    db.session.expire_all()
    return db.session.scalars(select(Job).where(Job.job_id == job_id)).one()


def _mails(sink: SinkHandler, subject: str) -> list[EmailMessage]:
    return [m for m in sink.messages if subject in str(m["Subject"])]


def _events(job_id: str, kind: str) -> int:
    return (
        db.session.scalar(
            select(func.count(JobEvent.id)).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
        )
        or 0
    )


def _ready_link(sink: SinkHandler, count: int = 1) -> tuple[str, str]:
    mails = sink.wait_for(
        count,
        timeout=30,
        where=lambda m: "ready" in str(m["Subject"]) or "fresh download link" in str(m["Subject"]),
    )
    assert len(mails) >= count, [str(m["Subject"]) for m in sink.messages]
    match = LINK.search(text_of(mails[count - 1]))
    assert match, text_of(mails[count - 1])
    return match.group(1), match.group(2)


def test_pay_then_one_ready_email_then_landing_page_then_the_file(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    from tests.conftest import rq_jobs_ended

    start_worker()
    job = _buy_and_pay(live_app, stripe_local)
    url, token = _ready_link(smtp_sink)
    done = wait_until(lambda: (j := _fresh(job.job_id)).email_sent and j, timeout=20)
    # "One ready email" holds once every task of the job has ended, not just the first mail.
    wait_until(lambda: rq_jobs_ended(live_app.app.config["REDIS_URL"], job.job_id), timeout=30)
    assert done.status == "completed" and done.completed_at is not None
    assert done.download_token != token and len(done.download_token or "") == 64
    paid_mails = smtp_sink.wait_for(1, where=lambda m: "Payment received" in str(m["Subject"]))
    assert f"/orders/{job.job_id}" in text_of(paid_mails[0])
    ready = _mails(smtp_sink, "ready")
    assert len(ready) == 1 and ready[0]["To"] == "buyer@example.com"
    body = text_of(ready[0])
    assert "480 x 360 pixels" in body and "UTC" in body
    assert ready[0].get_body(preferencelist=("html",)) is not None

    landing = requests.get(url, timeout=10)
    assert landing.status_code == 200
    assert "480 × 360 px" in landing.text and "Downloads left</dt><dd>10" in landing.text
    assert _fresh(job.job_id).download_count == 0  # looking changes nothing

    whole = requests.get(f"{url}/file", timeout=30)
    assert whole.status_code == 200
    assert whole.headers["Content-Type"] == "image/jpeg"
    assert whole.headers["Cache-Control"] == "no-store"
    assert whole.headers["Content-Disposition"] == (
        f"attachment; filename={done.post.slug}-{done.attachment_id}-4x.jpg"
    )
    assert _image_size(io.BytesIO(whole.content)) == (480, 360)
    assert _fresh(job.job_id).download_count == 1
    # Its row is written as the server closes the response: wait for it, so the rows keep order.
    query = select(DownloadLog).where(DownloadLog.job_id == job.job_id).order_by(DownloadLog.id)
    wait_until(lambda: len(db.session.scalars(query).all()) == 1)

    # A download that broke off and resumes: counted once in all.
    first = requests.get(f"{url}/file", headers={"Range": "bytes=0-99"}, timeout=10)
    rest = requests.get(f"{url}/file", headers={"Range": "bytes=100-"}, timeout=10)
    assert (first.status_code, rest.status_code) == (206, 206)
    assert first.content + rest.content == whole.content
    assert _fresh(job.job_id).download_count == 2
    beyond = requests.get(f"{url}/file", headers={"Range": "bytes=99999999-"}, timeout=10)
    assert beyond.status_code == 416
    # Each response is logged as it closes, with the bytes it sent.
    wait_until(lambda: len(db.session.scalars(query).all()) == 3)
    logged = db.session.scalars(query.execution_options(populate_existing=True)).all()
    # Rows are written as responses close, which may overlap the next request: the order of the
    # two pieces' rows, and which of them tipped the count, may differ; the bytes may not.
    assert logged[0].counted and logged[0].bytes_sent == len(whole.content)
    assert sorted(entry.bytes_sent for entry in logged[1:]) == sorted([100, len(rest.content)])
    assert _fresh(job.job_id).download_bytes == 2 * len(whole.content)


def test_expired_link_answers_410_and_the_resend_form_brings_a_working_one(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    job = _buy_and_pay(live_app, stripe_local)
    url, _token = _ready_link(smtp_sink)
    wait_until(lambda: _fresh(job.job_id).email_sent)
    db.session.execute(
        Job.__table__.update()
        .where(Job.job_id == job.job_id)
        .values(download_expires_at=utcnow() - dt.timedelta(minutes=1))
    )
    db.session.commit()
    expired = requests.get(url, timeout=10)
    assert expired.status_code == 410 and "has expired" in expired.text
    assert requests.get(f"{url}/file", timeout=10).status_code == 410
    answer = requests.post(
        f"{live_app.url}/download/resend",
        data={"email": "BUYER@example.com", "job_id": job.job_id},
        timeout=10,
    )
    assert answer.status_code == 200 and "a fresh link is on its way" in answer.text
    new_url, _ = _ready_link(smtp_sink, count=2)
    assert new_url != url
    assert requests.get(new_url, timeout=10).status_code == 200
    assert requests.get(f"{new_url}/file", timeout=10).status_code == 200
    assert requests.get(url, timeout=10).status_code == 404  # the old link stopped working


def test_resend_answers_the_same_when_nothing_matches(live_app: LiveApp, smtp_sink) -> None:
    answer = requests.post(
        f"{live_app.url}/download/resend",
        data={"email": "nobody@example.com", "job_id": "00000000-0000-0000-0000-000000000000"},
        timeout=10,
    )
    assert answer.status_code == 200 and "a fresh link is on its way" in answer.text
    assert smtp_sink.messages == []
    # No worker runs here: a mail on its way would be a job waiting on the queue.
    queue = Queue("default", connection=Redis.from_url(live_app.app.config["REDIS_URL"]))
    assert queue.is_empty()


def test_smtp_refusal_then_acceptance_sends_once_and_upscales_once(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    from tests.conftest import rq_jobs_ended

    smtp_sink.refuse_next = 2
    start_worker()
    job = _buy_and_pay(live_app, stripe_local)
    _ready_link(smtp_sink)
    wait_until(lambda: _fresh(job.job_id).email_sent, timeout=40)
    # Count once every task of the job, refused mails' retries included, has ended.
    wait_until(lambda: rq_jobs_ended(live_app.app.config["REDIS_URL"], job.job_id), timeout=40)
    assert len(_mails(smtp_sink, "ready")) == 1
    assert len(_mails(smtp_sink, "Payment received")) == 1
    assert _events(job.job_id, "processing") == 1
    assert _fresh(job.job_id).attempts == 1


def test_enqueued_twice_is_processed_once(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    from tests.conftest import rq_jobs_ended

    job = _buy_and_pay(live_app, stripe_local)
    wait_until(lambda: _fresh(job.job_id).status == "pending")
    redis_url = live_app.app.config["REDIS_URL"]
    queue = Queue("upscale", connection=Redis.from_url(redis_url))
    queue.enqueue("worker.tasks.process_job", job.job_id)  # a stray duplicate, under another id
    queue.enqueue("worker.tasks.process_job", job.job_id)
    start_worker()
    start_worker()
    _ready_link(smtp_sink)
    # An empty queue is not enough: a worker may still be running a duplicate it took.
    wait_until(
        lambda: _fresh(job.job_id).email_sent and rq_jobs_ended(redis_url, job.job_id), timeout=30
    )
    assert _events(job.job_id, "processing") == 1
    assert _events(job.job_id, "completed") == 1
    assert len(_mails(smtp_sink, "ready")) == 1


def test_permanent_failure_refunds_once_and_tells_buyer_and_admin(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    job = _buy_and_pay(live_app, stripe_local, width=2000, height=2000)  # 1.92
    attachment_path = resolve(live_app.app, _fresh(job.job_id).attachment.file_path)
    attachment_path.write_bytes(b"this is not an image any more")
    start_worker()
    failed = wait_until(
        lambda: (j := _fresh(job.job_id)).payment_status == "refunded" and j, timeout=30
    )
    assert failed.status == "failed" and failed.failed_at is not None
    assert "Upscaling failed" in (failed.error_message or "")
    assert failed.refund_amount == Decimal("1.92")
    refunds = list(stripe_local.state.refunds.values())
    assert len(refunds) == 1 and refunds[0]["amount"] == 192
    buyer = smtp_sink.wait_for(1, timeout=20, where=lambda m: "refunded" in str(m["Subject"]))
    assert buyer[0]["To"] == "buyer@example.com" and "$1.92" in text_of(buyer[0])
    admin = smtp_sink.wait_for(1, timeout=20, where=lambda m: m["To"] == "owner@shop.test")
    assert job.job_id in text_of(admin[0])
    assert _events(job.job_id, "processing") == 1  # permanent: no retry


def test_worker_killed_mid_job_is_brought_to_completed_by_the_sweeper(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    job = _buy_and_pay(live_app, stripe_local, width=2400, height=1800)  # a few seconds of work
    first = start_worker()
    wait_until(lambda: _fresh(job.job_id).status == "processing", timeout=30)
    first.kill()
    assert _fresh(job.job_id).status == "processing"

    from storefront.jobs.recovery import sweep

    with live_app.app.app_context():
        report = sweep(now=utcnow() + dt.timedelta(hours=2))
    assert report.requeued == [job.job_id]
    start_worker()
    done = wait_until(lambda: (j := _fresh(job.job_id)).status == "completed" and j, timeout=90)
    assert done.attempts == 2
    assert _image_size(resolve(live_app.app, done.upscaled_file_path)) == (9600, 7200)


def test_redis_down_when_the_webhook_arrives_is_processed_once_redis_is_back(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    live_app.app.extensions["smi_redis"] = Redis(port=1, socket_connect_timeout=0.2)
    job = _buy_and_pay(live_app, stripe_local)
    paid = wait_until(lambda: (j := _fresh(job.job_id)).status == "pending" and j)
    assert paid.payment_status == "paid"
    assert stripe_local.wait_idle(15)
    delivered = stripe_local.deliveries("checkout.session.completed")
    assert [d["status"] for d in delivered] == [200]
    del live_app.app.extensions["smi_redis"]  # Redis is back

    from storefront.jobs.recovery import sweep

    with live_app.app.app_context():
        report = sweep(now=utcnow() + dt.timedelta(minutes=5))
    assert report.queued == [job.job_id]
    start_worker()
    _ready_link(smtp_sink)
    done = wait_until(lambda: (j := _fresh(job.job_id)).email_sent and j, timeout=30)
    assert done.status == "completed" and done.attempts == 1


def test_the_scheduled_sweeper_picks_up_a_paid_job_that_was_never_queued(
    live_app: LiveApp,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    from tests.factories import make_job

    attachment = make_attachment(live_app.app, width=100, height=80)
    job = make_job(
        attachment,
        status="pending",
        payment_status="paid",
        paid_at=utcnow() - dt.timedelta(minutes=10),
        stripe_payment_intent_id="pi_lost",
    )
    db.session.commit()
    start_worker(SWEEP_INTERVAL_SECONDS=5)  # nothing but the sweeper can find this job
    done = wait_until(lambda: (j := _fresh(job.job_id)).status == "completed" and j, timeout=60)
    assert done.attempts == 1
    _ready_link(smtp_sink)
