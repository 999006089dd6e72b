"""Upsampler.com as the upscaler, against the local Upsampler-compatible server.

Trusted no further than it must be: callbacks are authenticated and re-checked, and results are
fetched only from allowed hosts.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from decimal import Decimal

import pytest
import requests
from PIL import Image
from sqlalchemy import func, select

from devservers.smtp_sink import SinkHandler
from devservers.stripe_local import LocalStripe
from devservers.upsampler_local import LocalUpsampler
from storefront.extensions import db
from storefront.jobs.upsampler_links import callback_signature
from storefront.models import Job, JobEvent, utcnow
from tests.conftest import LiveApp, WorkerProcess, wait_until
from tests.factories import make_attachment, resolve

# Tests that start real worker processes are marked `slow`: `make test-fast` leaves them out.


def _image_size(source: object) -> tuple[int, int]:
    with Image.open(source) as image:  # type: ignore[arg-type]
        return image.size


def _paid(live: LiveApp, stripe_local: LocalStripe, width: int = 80, height: int = 60) -> Job:
    attachment = make_attachment(live.app, width=width, height=height)
    db.session.commit()
    client = live.app.test_client()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": "buyer@example.com"}
    assert client.post("/checkout", data=data).status_code == 303
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
    assert job is not None
    stripe_local.pay(job.stripe_checkout_session_id)
    return wait_until(lambda: (j := _fresh(job.job_id)).status == "pending" and j)


def _fresh(job_id: str) -> Job:
    db.session.expire_all()
    return db.session.scalars(select(Job).where(Job.job_id == job_id)).one()


def _events(job_id: str, kind: str) -> int:
    return (
        db.session.scalar(
            select(func.count(JobEvent.id)).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
        )
        or 0
    )


def _submit_in_process(live: LiveApp, job_id: str) -> Job:
    from worker.upscaling import upscale_job

    with live.app.app_context():
        assert upscale_job(job_id) == "submitted"
    return _fresh(job_id)


def _check_in_process(live: LiveApp, job_id: str, attempt: int = 0) -> str:
    from worker.upsampler import check

    with live.app.app_context():
        return check(job_id, attempt)


@pytest.mark.slow
def test_success_through_the_callback(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    job = _paid(live_app, stripe_local)
    start_worker(UPSAMPLER_POLL_SECONDS=600)  # polling far away: only the callback can finish it
    done = wait_until(lambda: (j := _fresh(job.job_id)).status == "completed" and j, timeout=40)
    (submission,) = upsampler.submissions()
    body = submission["body"]
    assert body["input"]["upscaleFactor"] == 4
    assert body["input"]["imageUrl"].startswith(f"{live_app.url}/originals/")
    assert body["webhook"] == (
        f"{live_app.url}/webhooks/upsampler/{job.job_id}/"
        f"{callback_signature(live_app.app, job.job_id)}"
    )
    assert done.upsampler_job_id == upsampler.jobs()[0]["id"]
    assert _image_size(resolve(live_app.app, done.upscaled_file_path)) == (320, 240)
    assert done.credits_used == 1 and done.amount_cost == Decimal("0.04")
    assert smtp_sink.wait_for(1, timeout=20, where=lambda m: "ready" in str(m["Subject"]))
    # The original's signed URL dies with a bad signature.
    assert requests.get(f"{live_app.url}/originals/forged", timeout=5).status_code == 404


@pytest.mark.slow
def test_success_through_polling_alone(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    upsampler.set_behaviour(drop_callback=True)
    job = _paid(live_app, stripe_local)
    start_worker(UPSAMPLER_POLL_SECONDS=1)
    done = wait_until(lambda: (j := _fresh(job.job_id)).status == "completed" and j, timeout=40)
    assert [c for c in upsampler.callbacks() if not c.get("dropped")] == []
    assert len(upsampler.status_calls()) >= 1
    assert done.email_sent or smtp_sink.wait_for(1, timeout=20)


@pytest.mark.slow
def test_failed_upscale_is_refunded_and_mailed(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    upsampler.set_behaviour(fail="Failed to process image due to an internal error.")
    job = _paid(live_app, stripe_local)
    start_worker()
    failed = wait_until(
        lambda: (j := _fresh(job.job_id)).payment_status == "refunded" and j, timeout=40
    )
    assert failed.status == "failed"
    assert "internal error" in (failed.error_message or "")
    assert len(stripe_local.state.refunds) == 1
    assert smtp_sink.wait_for(1, timeout=20, where=lambda m: "refunded" in str(m["Subject"]))


def test_forged_callbacks_change_nothing(
    live_app: LiveApp, stripe_local: LocalStripe, upsampler: LocalUpsampler
) -> None:
    upsampler.set_behaviour(hold=True, drop_callback=True)
    job = _paid(live_app, stripe_local)
    submitted = _submit_in_process(live_app, job.job_id)
    lie = {"id": submitted.upsampler_job_id, "status": "SUCCESS", "imageUrl": "http://evil.test/x"}
    wrong = requests.post(
        f"{live_app.url}/webhooks/upsampler/{job.job_id}/not-the-signature", json=lie, timeout=5
    )
    assert wrong.status_code == 404
    other = requests.post(
        f"{live_app.url}/webhooks/upsampler/some-other-job/"
        f"{callback_signature(live_app.app, job.job_id)}",
        json=lie,
        timeout=5,
    )
    assert other.status_code == 404
    # The right signature with a lying body: the check asks Upsampler, which says IN_PROGRESS.
    right = requests.post(
        f"{live_app.url}/webhooks/upsampler/{job.job_id}/"
        f"{callback_signature(live_app.app, job.job_id)}",
        json=lie,
        timeout=5,
    )
    assert right.status_code == 200
    assert _check_in_process(live_app, job.job_id).startswith("waiting")
    after = _fresh(job.job_id)
    assert (after.status, after.payment_status, after.refunded_at) == ("processing", "paid", None)
    assert upsampler.downloads() == []
    assert stripe_local.state.refunds == {}


def test_callback_claiming_success_for_a_failed_job_is_not_believed(
    live_app: LiveApp, stripe_local: LocalStripe, upsampler: LocalUpsampler
) -> None:
    upsampler.set_behaviour(fail="no good", callback_claims_success=True)
    job = _paid(live_app, stripe_local)
    _submit_in_process(live_app, job.job_id)
    assert upsampler.wait_idle(10)
    assert _check_in_process(live_app, job.job_id) == "failed"
    assert _fresh(job.job_id).status == "failed"
    assert upsampler.downloads() == []


@pytest.mark.parametrize(
    ("behaviour", "config", "message"),
    [
        ({"result_host": "localhost"}, {}, "refused"),
        ({"oversize": 3 * 1024 * 1024}, {"UPSAMPLER_MAX_RESULT_MB": 1}, "refused"),
        ({"non_image": True}, {}, "not an image"),
        ({"size_offset": 10}, {}, "expected 320×240"),
    ],
    ids=["host-not-allowed", "too-large", "not-an-image", "wrong-size"],
)
def test_bad_results_fail_the_attempt_and_refund(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    behaviour: dict,
    config: dict,
    message: str,
) -> None:
    upsampler.set_behaviour(drop_callback=True, **behaviour)
    live_app.app.config.update(config)
    job = _paid(live_app, stripe_local)
    submitted = _submit_in_process(live_app, job.job_id)
    upsampler.wait_for(submitted.upsampler_job_id, timeout=20)
    assert _check_in_process(live_app, job.job_id) == "failed"
    failed = _fresh(job.job_id)
    assert failed.status == "failed" and message in (failed.error_message or "")
    assert failed.upscaled_file_path is None and failed.payment_status == "refunded"
    folder = resolve(live_app.app, f"deliveries/{job.job_id}")
    assert not folder.exists() or list(folder.iterdir()) == []


def test_429_with_retry_after_is_honoured(
    live_app: LiveApp, stripe_local: LocalStripe, upsampler: LocalUpsampler
) -> None:
    upsampler.set_behaviour(drop_callback=True)
    upsampler.fail_next(429, count=1, retry_after=1)
    job = _paid(live_app, stripe_local)
    started = time.monotonic()
    submitted = _submit_in_process(live_app, job.job_id)
    assert time.monotonic() - started >= 1
    statuses = [s["status"] for s in upsampler.submissions()]
    assert statuses == [429, 200]
    upsampler.wait_for(submitted.upsampler_job_id, timeout=20)
    assert _check_in_process(live_app, job.job_id) == "completed"


def test_no_answer_within_the_timeout_ends_in_a_refund(
    live_app: LiveApp, stripe_local: LocalStripe, upsampler: LocalUpsampler
) -> None:
    upsampler.set_behaviour(hold=True, drop_callback=True)
    job = _paid(live_app, stripe_local)
    _submit_in_process(live_app, job.job_id)
    assert _check_in_process(live_app, job.job_id, attempt=1).startswith("waiting")
    db.session.execute(
        Job.__table__.update()
        .where(Job.job_id == job.job_id)
        .values(processing_started_at=utcnow() - dt.timedelta(minutes=16))
    )
    db.session.commit()
    assert _check_in_process(live_app, job.job_id, attempt=2) == "timed out"
    failed = _fresh(job.job_id)
    assert failed.status == "failed" and failed.payment_status == "refunded"
    assert "did not finish within 15 minutes" in (failed.error_message or "")


@pytest.mark.slow
def test_the_same_callback_twice_does_the_work_once(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    from tests.conftest import rq_jobs_ended

    upsampler.set_behaviour(drop_callback=True)
    job = _paid(live_app, stripe_local)
    submitted = _submit_in_process(live_app, job.job_id)
    upsampler.wait_for(submitted.upsampler_job_id, timeout=20)
    upsampler.send_callback(submitted.upsampler_job_id)
    upsampler.send_callback(submitted.upsampler_job_id)
    start_worker(UPSAMPLER_POLL_SECONDS=600)
    wait_until(lambda: _fresh(job.job_id).status == "completed", timeout=40)
    # Count only once every check of this job (callbacks' and scheduled polls) has ended.
    wait_until(lambda: rq_jobs_ended(live_app.app.config["REDIS_URL"], job.job_id), timeout=40)
    assert len(upsampler.downloads()) == 1
    assert _events(job.job_id, "completed") == 1
