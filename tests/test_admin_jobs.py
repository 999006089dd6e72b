"""The admin's job list and job page, and each action with its refusals."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker
from sqlalchemy import func, select

from devservers.smtp_sink import SinkHandler, text_of
from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.jobs.delivery import new_token
from storefront.jobs.state import record_event
from storefront.models import AdminAction, DownloadLog, Job, JobEvent, StripeEvent, utcnow
from tests import admin_helpers
from tests.admin_helpers import ADMIN_NAME, completed_job, fresh, request_id, text
from tests.conftest import LiveApp, wait_until
from tests.factories import make_attachment, make_job, resolve
from worker.context import use_app

admin_user = admin_helpers.admin_user
admin_client = admin_helpers.admin_client

LINK = re.compile(r"http://[^\s/]+/download/([0-9a-f]{64})")


def _confirm_and_post(client: FlaskClient, job_id: str, action: str, **data: str) -> object:
    page = client.get(f"/admin/jobs/{job_id}/actions/{action}")
    assert page.status_code == 200, text(page)
    return client.post(
        f"/admin/jobs/{job_id}/actions/{action}",
        data={"request_id": request_id(text(page)), **data},
    )


def _events(job_id: str, kind: str) -> list[JobEvent]:
    return list(
        db.session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind))
    )


def _audit(action: str) -> list[AdminAction]:
    return list(db.session.scalars(select(AdminAction).where(AdminAction.action == action)))


def _with_token(job: Job) -> str:
    token, digest = new_token()
    job.download_token = digest
    db.session.commit()
    return token


# The list -----------------------------------------------------------------------------------


@pytest.fixture
def mixed_jobs(app: Flask) -> dict[str, Job]:
    """A handful of jobs in different states, on different days, with different buyers."""
    attachment = make_attachment(app)
    now = utcnow()
    jobs = {
        "done": make_job(
            attachment,
            status="completed",
            payment_status="paid",
            email="ada@example.com",
            amount_charged=Decimal("7.68"),
            stripe_payment_intent_id="pi_done",
            stripe_checkout_session_id="cs_done",
            created_at=now - dt.timedelta(days=2),
            paid_at=now - dt.timedelta(days=2),
            completed_at=now - dt.timedelta(days=2),
        ),
        "failed": make_job(
            attachment,
            status="failed",
            payment_status="refunded",
            email="bob@example.com",
            amount_charged=Decimal("1.08"),
            created_at=now - dt.timedelta(days=10),
        ),
        "waiting": make_job(
            attachment, status="awaiting_payment", email="Cy@Example.com", created_at=now
        ),
    }
    db.session.commit()
    return jobs


def _listed(client: FlaskClient, query: str) -> set[str]:
    page = client.get(f"/admin/jobs{query}")
    assert page.status_code == 200
    return set(re.findall(r'/admin/jobs/([0-9a-f-]{36})"', page.get_data(as_text=True)))


def test_list_filters_by_status_payment_dates_and_search(
    admin_client: FlaskClient, mixed_jobs: dict[str, Job]
) -> None:
    ids = {name: job.job_id for name, job in mixed_jobs.items()}
    assert _listed(admin_client, "") == set(ids.values())
    assert _listed(admin_client, "?status=completed") == {ids["done"]}
    assert _listed(admin_client, "?payment_status=refunded") == {ids["failed"]}
    today = utcnow().date()
    week_ago = (today - dt.timedelta(days=7)).isoformat()
    assert _listed(admin_client, f"?from={week_ago}") == {ids["done"], ids["waiting"]}
    assert _listed(admin_client, f"?to={week_ago}") == {ids["failed"]}
    assert _listed(admin_client, "?q=ada@example.com") == {ids["done"]}
    assert _listed(admin_client, "?q=cy@example.com") == set()  # stored as typed
    assert _listed(admin_client, "?q=Cy@Example.com") == {ids["waiting"]}
    assert _listed(admin_client, "?q=example") == set(ids.values())
    assert _listed(admin_client, "?q=ADA") == {ids["done"]}  # part of an email, any case
    assert _listed(admin_client, f"?q={ids['failed'][:8]}") == {ids["failed"]}  # as listed
    assert _listed(admin_client, f"?q={ids['failed']}") == {ids["failed"]}
    assert _listed(admin_client, "?q=pi_done") == {ids["done"]}
    assert _listed(admin_client, "?q=cs_done") == {ids["done"]}
    assert _listed(admin_client, "?status=completed&q=bob@example.com") == set()


def test_list_sorts_and_shows_bad_filters(
    admin_client: FlaskClient, mixed_jobs: dict[str, Job]
) -> None:
    page = text(admin_client.get("/admin/jobs?sort=amount&order=asc"))
    order = re.findall(r'/admin/jobs/([0-9a-f-]{36})"', page)
    assert order == [
        mixed_jobs["waiting"].job_id,
        mixed_jobs["failed"].job_id,
        mixed_jobs["done"].job_id,
    ]
    bad = text(admin_client.get("/admin/jobs?status=shipped&from=yesterday"))
    assert "Unknown status 'shipped'" in bad
    assert "From must be a date like 2026-01-31" in bad


def test_list_is_paginated(app: Flask, admin_client: FlaskClient) -> None:
    attachment = make_attachment(app)
    for _ in range(53):
        make_job(attachment)
    db.session.commit()
    first = text(admin_client.get("/admin/jobs"))
    assert "53 jobs" in first and "page 1 of 2" in first
    assert len(re.findall(r'/admin/jobs/([0-9a-f-]{36})"', first)) == 50
    second = admin_client.get("/admin/jobs?page=2")
    assert len(re.findall(r'/admin/jobs/([0-9a-f-]{36})"', text(second))) == 3


def test_filtered_list_downloads_as_csv(
    admin_client: FlaskClient, mixed_jobs: dict[str, Job]
) -> None:
    response = admin_client.get("/admin/jobs.csv?status=completed")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [row["job_id"] for row in rows] == [mixed_jobs["done"].job_id]
    assert set(rows[0]) == {column.name for column in Job.__table__.columns}
    assert rows[0]["amount_charged"] == "7.68"
    assert rows[0]["email"] == "ada@example.com"


# The job page -------------------------------------------------------------------------------


def test_job_page_shows_columns_timeline_downloads_and_error(
    app: Flask, admin_client: FlaskClient
) -> None:
    job = completed_job(app, error_message="Upscaling failed once: timeout")
    record_event(job.job_id, "email_ready", "sent to the buyer")
    db.session.add(
        StripeEvent(event_id="evt_123", type="checkout.session.completed", job_id=job.job_id)
    )
    db.session.add(DownloadLog(job_id=job.job_id, ip="203.0.113.9", bytes_sent=20, counted=True))
    db.session.commit()
    page = text(admin_client.get(f"/admin/jobs/{job.job_id}"))
    for column in Job.__table__.columns:
        assert f">{column.name}<" in page
    assert "Upscaling failed once: timeout" in page
    assert "email_ready" in page and "checkout.session.completed" in page and "evt_123" in page
    assert "203.0.113.9" in page
    assert "(a SHA-256 digest is stored)" in page
    assert "Resend the download email" in page and "Extend the link" in page
    assert "/actions/retry" not in page  # not offered to a completed job


def test_unknown_job_and_action_are_404(app: Flask, admin_client: FlaskClient) -> None:
    assert admin_client.get("/admin/jobs/nope").status_code == 404
    job = completed_job(app)
    assert admin_client.get(f"/admin/jobs/{job.job_id}/actions/explode").status_code == 404
    assert admin_client.post(f"/admin/jobs/{job.job_id}/actions/explode").status_code == 404


# Retry --------------------------------------------------------------------------------------


def test_retry_puts_a_failed_paid_job_back_on_the_queue(
    app: Flask, admin_client: FlaskClient, redis_url: str
) -> None:
    job = make_job(
        make_attachment(app),
        status="failed",
        payment_status="paid",
        failed_at=utcnow(),
        attempts=3,
        error_message="the engine crashed",
    )
    db.session.commit()
    response = _confirm_and_post(admin_client, job.job_id, "retry")
    assert response.status_code == 303
    again = fresh(job.job_id)
    assert (again.status, again.attempts, again.error_message) == ("pending", 0, None)
    assert Queue("upscale", connection=Redis.from_url(redis_url)).job_ids == [
        f"upscale-{job.job_id}"
    ]
    (event,) = _events(job.job_id, "admin_retry")
    assert event.actor == ADMIN_NAME
    assert _audit("retry")[0].admin == ADMIN_NAME


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"status": "completed", "payment_status": "paid"}, "Only a failed, paid job"),
        ({"status": "failed", "payment_status": "refunded"}, "Only a failed, paid job"),
    ],
)
def test_retry_is_refused_in_other_states(
    app: Flask, admin_client: FlaskClient, redis_url: str, fields: dict[str, str], reason: str
) -> None:
    job = make_job(make_attachment(app), **fields)
    db.session.commit()
    before = fresh(job.job_id).updated_at
    shown = admin_client.get(f"/admin/jobs/{job.job_id}/actions/retry")
    assert shown.status_code == 409 and reason in text(shown)
    response = admin_client.post(
        f"/admin/jobs/{job.job_id}/actions/retry", data={"request_id": "x1"}
    )
    assert response.status_code == 409
    assert reason in text(response)
    assert fresh(job.job_id).status == fields["status"]
    assert fresh(job.job_id).updated_at == before
    assert Queue("upscale", connection=Redis.from_url(redis_url)).job_ids == []
    assert _audit("retry") == []


# Refund -------------------------------------------------------------------------------------


def _paid_through_stripe(live: LiveApp, stripe_local: LocalStripe, email: str) -> Job:
    attachment = make_attachment(live.app, width=1500, height=1500, title="Pier")
    db.session.commit()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": email}
    assert live.app.test_client().post("/checkout", data=data).status_code == 303
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
    assert job is not None
    stripe_local.pay(job.stripe_checkout_session_id)
    assert stripe_local.wait_idle(15)
    return wait_until(lambda: (j := fresh(job.job_id)).payment_status == "paid" and j)


def test_partial_refund_reaches_stripe_once_even_when_pressed_twice(
    live_app: LiveApp, stripe_local: LocalStripe, admin_user: object
) -> None:
    job = _paid_through_stripe(live_app, stripe_local, "payer@example.com")
    assert job.amount_charged == Decimal("1.08")
    client = live_app.app.test_client()
    admin_helpers.sign_in(client)
    page = client.get(f"/admin/jobs/{job.job_id}/actions/refund")
    data = {"request_id": request_id(text(page)), "amount": "0.54", "reason": "Colours were off"}
    first = client.post(f"/admin/jobs/{job.job_id}/actions/refund", data=data)
    second = client.post(f"/admin/jobs/{job.job_id}/actions/refund", data=data)
    assert first.status_code == second.status_code == 303
    assert "This was done already" in text(client.get(f"/admin/jobs/{job.job_id}"))
    assert len(stripe_local.state.refunds) == 1
    (refund,) = stripe_local.state.refunds.values()
    assert (refund["amount"], refund["metadata"]["reason"]) == (54, "Colours were off")
    # The charge.refunded webhook arrives and finds the refund recorded.
    assert stripe_local.wait_idle(15)
    wait_until(
        lambda: db.session.scalar(
            select(func.count(StripeEvent.id)).where(StripeEvent.type == "charge.refunded")
        )
    )
    refunded = fresh(job.job_id)
    assert (refunded.refund_amount, refunded.payment_status) == (Decimal("0.54"), "paid")
    assert refunded.refund_reason == "Colours were off"
    assert len(_audit("refund")) == 1 and _audit("refund")[0].admin == ADMIN_NAME
    # Whoever lands first (this request or the webhook) notes the same total.
    assert [e.actor for e in _events(job.job_id, "admin_refund")] == [ADMIN_NAME]
    assert {e.message for e in _events(job.job_id, "refunded")} == {
        "0.54 usd refunded in all (partial)"
    }
    page = text(client.get(f"/admin/jobs/{job.job_id}"))
    assert "$0.54" in page and "charge.refunded" in page

    # The rest, later, is a second refund; then the job is refunded in full.
    rest = client.get(f"/admin/jobs/{job.job_id}/actions/refund")
    response = client.post(
        f"/admin/jobs/{job.job_id}/actions/refund",
        data={"request_id": request_id(text(rest)), "amount": "", "reason": "Goodwill"},
    )
    assert response.status_code == 303
    assert len(stripe_local.state.refunds) == 2
    full = fresh(job.job_id)
    assert (full.refund_amount, full.payment_status) == (Decimal("1.08"), "refunded")
    refused = client.get(f"/admin/jobs/{job.job_id}/actions/refund")
    assert refused.status_code == 409
    assert "Only a paid job can be refunded" in text(refused)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("5.00", "A refund must be between 0.01 and 1.08 USD."),
        ("0", "A refund must be between 0.01 and 1.08 USD."),
        ("abc", "is not an amount"),
        ("0.001", "in cents at most"),
    ],
)
def test_refund_of_a_bad_amount_is_refused_before_stripe(
    live_app: LiveApp, stripe_local: LocalStripe, admin_user: object, amount: str, message: str
) -> None:
    job = _paid_through_stripe(live_app, stripe_local, "payer@example.com")
    client = live_app.app.test_client()
    admin_helpers.sign_in(client)
    page = client.get(f"/admin/jobs/{job.job_id}/actions/refund")
    response = client.post(
        f"/admin/jobs/{job.job_id}/actions/refund",
        data={"request_id": request_id(text(page)), "amount": amount, "reason": "Test"},
    )
    assert response.status_code == 409
    assert message in text(response)
    assert stripe_local.state.refunds == {}
    assert fresh(job.job_id).refund_amount is None
    assert _audit("refund") == []


def test_refund_needs_a_reason_and_a_paid_job(app: Flask, admin_client: FlaskClient) -> None:
    unpaid = make_job(make_attachment(app))
    db.session.commit()
    response = admin_client.post(
        f"/admin/jobs/{unpaid.job_id}/actions/refund",
        data={"request_id": "r", "amount": "", "reason": "why not"},
    )
    assert response.status_code == 409
    assert "Only a paid job can be refunded; this one is awaiting_payment" in text(response)
    paid = completed_job(app)
    page = admin_client.get(f"/admin/jobs/{paid.job_id}/actions/refund")
    no_reason = admin_client.post(
        f"/admin/jobs/{paid.job_id}/actions/refund",
        data={"request_id": request_id(text(page)), "amount": "1.00", "reason": ""},
    )
    assert no_reason.status_code == 400
    assert "Give a reason for the refund" in text(no_reason)
    assert fresh(paid.job_id).refund_amount is None


# Resend, extend, revoke ---------------------------------------------------------------------


def test_resend_mails_a_fresh_link_and_the_old_one_stops_once_it_is_sent(
    app: Flask, admin_client: FlaskClient, smtp_sink: SinkHandler, redis_url: str
) -> None:
    job = completed_job(app, email="reader@example.com")
    old_token = _with_token(job)
    assert admin_client.get(f"/download/{old_token}").status_code == 200
    response = _confirm_and_post(admin_client, job.job_id, "resend")
    assert response.status_code == 303
    # Until the new link is issued and sent, the buyer keeps the one they have.
    assert admin_client.get(f"/download/{old_token}").status_code == 200
    renewed = fresh(job.job_id)
    assert renewed.download_count == 0
    assert renewed.download_expires_at is not None and renewed.download_expires_at > utcnow()
    (event,) = _events(job.job_id, "link_renewed")
    assert event.actor == ADMIN_NAME

    # The worker sends it: a real RQ worker (in this process) and the SMTP sink.
    connection = Redis.from_url(redis_url)
    use_app(app)
    try:
        SimpleWorker([Queue("default", connection=connection)], connection=connection).work(
            burst=True
        )
    finally:
        use_app(None)
    (mail,) = smtp_sink.wait_for(1, timeout=10)
    assert mail["To"] == "reader@example.com"
    assert "fresh download link" in str(mail["Subject"])
    new_token_value = LINK.search(text_of(mail))
    assert new_token_value is not None and new_token_value.group(1) != old_token
    assert admin_client.get(f"/download/{new_token_value.group(1)}").status_code == 200
    assert admin_client.get(f"/download/{old_token}").status_code == 404


def test_resend_is_refused_when_the_file_is_gone(app: Flask, admin_client: FlaskClient) -> None:
    job = completed_job(app)
    resolve(app, job.upscaled_file_path or "").unlink()
    response = admin_client.post(
        f"/admin/jobs/{job.job_id}/actions/resend", data={"request_id": "r"}
    )
    assert response.status_code == 409
    assert "The delivered file is no longer kept" in text(response)
    assert fresh(job.job_id).download_token == "a" * 64


def test_extend_keeps_the_link_working_longer(app: Flask, admin_client: FlaskClient) -> None:
    job = completed_job(app, expires_in=dt.timedelta(hours=2))
    before = fresh(job.job_id).download_expires_at
    assert before is not None
    response = _confirm_and_post(admin_client, job.job_id, "extend", hours="48")
    assert response.status_code == 303
    after = fresh(job.job_id).download_expires_at
    assert after == before + dt.timedelta(hours=48)
    assert fresh(job.job_id).download_token == "a" * 64
    assert "by 48 hours" in _events(job.job_id, "admin_extend")[0].message


def test_extend_refuses_bad_hours_and_revoked_links(app: Flask, admin_client: FlaskClient) -> None:
    job = completed_job(app)
    before = fresh(job.job_id).download_expires_at
    page = admin_client.get(f"/admin/jobs/{job.job_id}/actions/extend")
    response = admin_client.post(
        f"/admin/jobs/{job.job_id}/actions/extend",
        data={"request_id": request_id(text(page)), "hours": "500"},
    )
    assert response.status_code == 400
    assert "Extend by 1 to 168 hours" in text(response)
    assert fresh(job.job_id).download_expires_at == before
    job.download_token = None
    db.session.commit()
    refused = admin_client.post(
        f"/admin/jobs/{job.job_id}/actions/extend", data={"request_id": "x", "hours": "5"}
    )
    assert refused.status_code == 409
    assert "resend the download email instead" in text(refused)


def test_revoke_ends_the_link_at_once(app: Flask, admin_client: FlaskClient) -> None:
    job = completed_job(app)
    token = _with_token(job)
    assert admin_client.get(f"/download/{token}").status_code == 200
    assert _confirm_and_post(admin_client, job.job_id, "revoke").status_code == 303
    assert admin_client.get(f"/download/{token}").status_code == 404
    revoked = fresh(job.job_id)
    assert revoked.download_token is None
    assert revoked.download_expires_at is not None and revoked.download_expires_at <= utcnow()
    assert resolve(app, revoked.upscaled_file_path or "").is_file()  # the cleanup removes it later
    again = admin_client.post(f"/admin/jobs/{job.job_id}/actions/revoke", data={"request_id": "z"})
    assert again.status_code == 409
    assert "no working download link to revoke" in text(again)


# Abandon, delete the file -------------------------------------------------------------------


def test_mark_abandoned_closes_the_checkout_on_stripe(
    app: Flask, admin_client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    assert (
        app.test_client()
        .post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x", "email": ""})
        .status_code
        == 303
    )
    job = db.session.scalars(select(Job)).one()
    response = _confirm_and_post(admin_client, job.job_id, "abandon")
    assert response.status_code == 303
    assert fresh(job.job_id).status == "abandoned"
    assert stripe_local.state.sessions[job.stripe_checkout_session_id]["status"] == "expired"
    assert _events(job.job_id, "abandoned")[0].actor == ADMIN_NAME


def test_mark_abandoned_is_only_for_jobs_awaiting_payment(
    app: Flask, admin_client: FlaskClient
) -> None:
    job = completed_job(app)
    response = admin_client.post(
        f"/admin/jobs/{job.job_id}/actions/abandon", data={"request_id": "a"}
    )
    assert response.status_code == 409
    assert "Only a job awaiting payment can be marked abandoned" in text(response)
    assert fresh(job.job_id).status == "completed"


def test_delete_file_removes_it_and_ends_the_link(app: Flask, admin_client: FlaskClient) -> None:
    job = completed_job(app)
    token = _with_token(job)
    path = resolve(app, job.upscaled_file_path or "")
    assert _confirm_and_post(admin_client, job.job_id, "delete_file").status_code == 303
    assert not path.exists() and not path.parent.exists()
    gone = fresh(job.job_id)
    assert (gone.upscaled_file_path, gone.download_token, gone.status) == (None, None, "completed")
    assert admin_client.get(f"/download/{token}").status_code == 404
    again = admin_client.post(
        f"/admin/jobs/{job.job_id}/actions/delete_file", data={"request_id": "d"}
    )
    assert again.status_code == 409
    assert "This job has no delivered file" in text(again)
    assert [a.admin for a in _audit("delete_file")] == [ADMIN_NAME]


def test_a_refund_sent_twice_at_once_reaches_stripe_once(
    live_app: LiveApp, stripe_local: LocalStripe, admin_user: object
) -> None:
    job = _paid_through_stripe(live_app, stripe_local, "payer@example.com")
    browser = requests.Session()
    signed_in = browser.post(
        f"{live_app.url}/admin/login",
        data={"email": admin_helpers.ADMIN_EMAIL, "password": admin_helpers.ADMIN_PASSWORD},
        allow_redirects=False,
        timeout=20,
    )
    assert signed_in.status_code == 303
    url = f"{live_app.url}/admin/jobs/{job.job_id}/actions/refund"
    form = {
        "request_id": request_id(browser.get(url, timeout=20).text),
        "amount": "0.54",
        "reason": "Double click",
    }
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda _: browser.post(url, data=form, allow_redirects=False, timeout=30),
                range(2),
            )
        )
    assert all(answer.status_code in (303, 409) for answer in answers), [
        a.status_code for a in answers
    ]
    assert len(stripe_local.state.refunds) == 1
    assert stripe_local.wait_idle(15)
    refunded = fresh(job.job_id)
    assert (refunded.refund_amount, refunded.payment_status) == (Decimal("0.54"), "paid")
    assert len(_audit("refund")) == 1
