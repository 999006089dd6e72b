"""The buyer's order page: only for the buyer, live status, and no download link in it."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue
from sqlalchemy import select

from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.models import Job
from tests.factories import make_attachment, make_job


def _buy(app: Flask, client: FlaskClient) -> Job:
    attachment = make_attachment(app, title="Night sky")
    db.session.commit()
    client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x"})
    return db.session.scalars(select(Job)).one()


def test_order_page_is_404_without_the_session_or_cookie(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    job = _buy(app, client)
    stranger = app.test_client()
    assert stranger.get(f"/orders/{job.job_id}").status_code == 404
    assert stranger.get(f"/orders/{job.job_id}?session_id=cs_test_wrong").status_code == 404
    assert stranger.get(f"/orders/{job.job_id}/status").status_code == 404
    assert stranger.get("/orders/no-such-order").status_code == 404


def test_buyer_with_the_checkout_cookie_sees_the_order(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    job = _buy(app, client)
    page = client.get(f"/orders/{job.job_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Night sky" in html and "$0.50" in html and "800 × 600 px" in html
    assert "Confirming your payment" in html


def test_returning_from_stripe_before_the_webhook_fulfils_once(
    app: Flask, stripe_local: LocalStripe
) -> None:
    client = app.test_client()
    job = _buy(app, client)
    session = stripe_local.pay(job.stripe_checkout_session_id)  # no webhook URL: none arrives
    other_browser = app.test_client()
    url = f"/orders/{job.job_id}?session_id={session['id']}"
    first = other_browser.get(url, follow_redirects=True)
    second = other_browser.get(url, follow_redirects=True)
    assert first.status_code == second.status_code == 200
    # Each time on to the page's address without the session id (303).
    assert [r.status_code for r in (*first.history, *second.history)] == [303, 303]
    assert second.request.path == f"/orders/{job.job_id}" and not second.request.query_string
    assert "Paid: in the queue" in second.get_data(as_text=True)
    db.session.expire_all()
    paid = db.session.scalars(select(Job)).one()
    assert (paid.status, paid.payment_status) == ("pending", "paid")
    queue = Queue("upscale", connection=Redis.from_url(app.config["REDIS_URL"]))
    assert queue.job_ids == [f"upscale-{job.job_id}"]
    # The session id in the URL also let this browser in for later visits.
    assert other_browser.get(f"/orders/{job.job_id}/status").status_code == 200


def test_status_json_follows_the_job_and_never_holds_a_link(
    app: Flask, client: FlaskClient
) -> None:
    job = make_job(
        make_attachment(app),
        status="completed",
        payment_status="paid",
        stripe_checkout_session_id="cs_test_known",
        download_token="a" * 64,
        upscaled_file_path="deliveries/x/file.jpg",
    )
    db.session.commit()
    response = client.get(f"/orders/{job.job_id}/status?session_id=cs_test_known")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    state = response.json
    assert state["headline"] == "Ready: check your email" and state["final"] is True
    assert [step["state"] for step in state["steps"]] == ["done", "done", "done"]
    back = client.get(f"/orders/{job.job_id}?session_id=cs_test_known", follow_redirects=True)
    page = back.get_data(as_text=True)
    assert not re.search(r"/download/[0-9a-f]{64}", page)
    assert "a" * 64 not in page and "file.jpg" not in page
    assert "fresh link" in page  # only the form that emails one to the order's address


def test_failed_job_says_refunded(app: Flask, client: FlaskClient) -> None:
    job = make_job(
        make_attachment(app),
        status="failed",
        payment_status="refunded",
        stripe_checkout_session_id="cs_test_failed",
    )
    db.session.commit()
    state = client.get(f"/orders/{job.job_id}/status?session_id=cs_test_failed").json
    assert state["headline"] == "We couldn't process your image"
    assert "refunded in full" in state["detail"]
