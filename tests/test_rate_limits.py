"""Rate limits on the anonymous endpoints that cost something (Buy, fresh links), per client address
as the trusted proxies say it, in Redis or in memory when Redis is down; and one Checkout Session
per open purchase."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import func, select, update

from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.jobs.delivery import new_token
from storefront.jobs.stripe_api import expire_session
from storefront.models import Attachment, DownloadLog, Job, utcnow
from tests.admin_helpers import completed_job
from tests.factories import make_attachment


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Small limits, so that a test reaches them in a few requests."""
    app_config.update(CHECKOUT_RATE_LIMIT="3/minute;5/hour", RESEND_PER_HOUR=2)
    return app_config


@pytest.fixture
def roomy_limits(app_config: dict[str, Any]) -> None:
    """Limits a test about something else does not reach."""
    app_config["CHECKOUT_RATE_LIMIT"] = "100/minute"


@pytest.fixture
def behind_one_proxy(app_config: dict[str, Any]) -> None:
    """The app runs behind one proxy (nginx) whose X-Forwarded-* it believes."""
    app_config["TRUSTED_PROXY_HOPS"] = 1


@pytest.fixture
def redis_nobody_listens_on(app_config: dict[str, Any]) -> Iterator[None]:
    """The app's REDIS_URL is a port that refuses every connection."""
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        app_config["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        yield


def _client_at(app: Flask, address: str) -> FlaskClient:
    """A browser whose requests reach the app from `address`."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def _attachment(app: Flask) -> Attachment:
    attachment = make_attachment(app, width=2000, height=2000)
    db.session.commit()
    return attachment


def _buy(client: FlaskClient, attachment: Attachment, email: str = "", **headers: str) -> Any:
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": email}
    return client.post("/checkout", data=data, headers=headers)


def _jobs() -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count(Job.id))) or 0


def _assert_slow_down_page(response: Any, longest_wait: int) -> None:
    assert response.status_code == 429
    body = response.get_data(as_text=True)
    assert "Slow down a little" in body and "Traceback" not in body
    assert 1 <= int(response.headers["Retry-After"]) <= longest_wait


# Buy -----------------------------------------------------------------------------------------


def test_buy_past_the_limit_gets_the_429_page_and_starts_no_job_nor_session(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = _attachment(app)
    for n in range(3):
        assert _buy(client, attachment, f"buyer{n}@example.com").status_code == 303
    response = _buy(client, attachment, "buyer3@example.com")
    _assert_slow_down_page(response, 60)
    assert "Nothing was charged" in response.get_data(as_text=True)
    assert _jobs() == 3
    assert len(stripe_local.state.sessions) == 3


def test_the_limits_count_in_the_apps_redis(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe, redis_url: str
) -> None:
    # The tests' Redis is a unix:// socket URL: the limiter's storage must accept it.
    assert redis_url.startswith("unix://")
    assert _buy(client, _attachment(app), "a@example.com").status_code == 303
    connection = Redis.from_url(redis_url)
    try:
        assert list(connection.scan_iter("smi:limits*"))
    finally:
        connection.close()


def test_a_spoofed_forwarded_for_does_not_escape_the_limit(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = _attachment(app)
    for n in range(3):
        response = _buy(
            client, attachment, f"b{n}@example.com", **{"X-Forwarded-For": f"10.9.9.{n}"}
        )
        assert response.status_code == 303
    spoofed = _buy(client, attachment, "b3@example.com", **{"X-Forwarded-For": "10.9.9.200"})
    _assert_slow_down_page(spoofed, 60)
    assert _jobs() == 3


def test_behind_a_trusted_proxy_each_client_has_its_own_limit(
    behind_one_proxy: None, app: Flask, stripe_local: LocalStripe
) -> None:
    attachment = _attachment(app)
    # Every request comes from the proxy's address; the proxy names the client.
    first = _client_at(app, "10.0.0.2")
    second = _client_at(app, "10.0.0.2")
    for n in range(3):
        response = _buy(
            first, attachment, f"c{n}@example.com", **{"X-Forwarded-For": "203.0.113.7"}
        )
        assert response.status_code == 303
    refused = _buy(first, attachment, "c3@example.com", **{"X-Forwarded-For": "203.0.113.7"})
    _assert_slow_down_page(refused, 60)
    other = _buy(second, attachment, "d@example.com", **{"X-Forwarded-For": "198.51.100.4"})
    assert other.status_code == 303
    assert _jobs() == 4


def test_the_download_log_keeps_the_address_the_trusted_proxy_names(
    behind_one_proxy: None, app: Flask
) -> None:
    job = completed_job(app)
    token, digest = new_token()
    job.download_token = digest
    db.session.commit()
    client = _client_at(app, "10.0.0.2")
    forwarded = {"X-Forwarded-For": "198.51.100.23", "X-Forwarded-Proto": "https"}
    response = client.get(f"/download/{token}/file", headers=forwarded)
    assert response.status_code == 200 and response.get_data() == b"upscaled image bytes"
    response.close()
    (entry,) = db.session.scalars(select(DownloadLog).where(DownloadLog.job_id == job.job_id))
    assert entry.ip == "198.51.100.23"


def test_without_trusted_proxies_the_download_log_ignores_forwarded_for(app: Flask) -> None:
    job = completed_job(app)
    token, digest = new_token()
    job.download_token = digest
    db.session.commit()
    client = _client_at(app, "192.0.2.50")
    response = client.get(f"/download/{token}/file", headers={"X-Forwarded-For": "198.51.100.23"})
    assert response.status_code == 200 and response.get_data() == b"upscaled image bytes"
    response.close()
    (entry,) = db.session.scalars(select(DownloadLog).where(DownloadLog.job_id == job.job_id))
    assert entry.ip == "192.0.2.50"


# Fresh links ---------------------------------------------------------------------------------


def _ask_for_a_link(client: FlaskClient, email: str, job_id: str = "no-such-order") -> Any:
    return client.post("/download/resend", data={"email": email, "job_id": job_id})


def test_fresh_links_are_limited_per_email_address_asked_about(
    app: Flask, client: FlaskClient
) -> None:
    for _ in range(2):
        assert _ask_for_a_link(client, "ana@example.com").status_code == 200
    # The same address, written differently, from another client: still the same address.
    other_client = _client_at(app, "192.0.2.77")
    refused = _ask_for_a_link(other_client, " ANA@example.com ")
    _assert_slow_down_page(refused, 3600)
    assert "wait an hour" in refused.get_data(as_text=True)
    assert _ask_for_a_link(client, "bo@example.com").status_code == 200


def test_fresh_links_are_limited_to_four_times_as_many_per_client(
    app: Flask, client: FlaskClient
) -> None:
    for n in range(8):
        assert _ask_for_a_link(client, f"buyer{n}@example.com").status_code == 200
    _assert_slow_down_page(_ask_for_a_link(client, "buyer8@example.com"), 3600)
    elsewhere = _client_at(app, "192.0.2.78")
    assert _ask_for_a_link(elsewhere, "buyer9@example.com").status_code == 200


# Redis unreachable ---------------------------------------------------------------------------


def test_with_redis_unreachable_the_limits_hold_in_memory(
    redis_nobody_listens_on: None, app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = _attachment(app)
    for n in range(3):
        assert _buy(client, attachment, f"e{n}@example.com").status_code == 303
    _assert_slow_down_page(_buy(client, attachment, "e3@example.com"), 60)
    assert _jobs() == 3
    for _ in range(2):
        assert _ask_for_a_link(client, "ana@example.com").status_code == 200
    _assert_slow_down_page(_ask_for_a_link(client, "ana@example.com"), 3600)


# One job, one session ------------------------------------------------------------------------


def test_buy_pressed_again_goes_back_to_the_open_session(
    roomy_limits: None, app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = _attachment(app)
    first = _buy(client, attachment, "fay@example.com")
    again = _buy(client, attachment, "fay@example.com")
    assert first.status_code == again.status_code == 303
    assert again.headers["Location"] == first.headers["Location"]
    assert _jobs() == 1
    assert len(stripe_local.state.sessions) == 1
    # Another email, another resolution, or another browser is another order.
    assert (
        _buy(client, attachment, "gus@example.com").headers["Location"] != first.headers["Location"]
    )
    eight = client.post(
        "/checkout",
        data={"attachment_id": attachment.id, "resolution": "8x", "email": "fay@example.com"},
    )
    assert eight.headers["Location"] != first.headers["Location"]
    assert _jobs() == 3
    stranger = app.test_client()
    assert (
        _buy(stranger, attachment, "fay@example.com").headers["Location"]
        != first.headers["Location"]
    )
    assert _jobs() == 4


def test_a_session_stripe_closed_or_about_to_expire_is_not_reused(
    roomy_limits: None, app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    attachment = _attachment(app)
    first = _buy(client, attachment, "hal@example.com")
    job = db.session.scalars(select(Job)).one()
    assert job.stripe_checkout_session_id is not None
    expire_session(job.stripe_checkout_session_id)
    second = _buy(client, attachment, "hal@example.com")
    assert second.status_code == 303 and second.headers["Location"] != first.headers["Location"]
    assert _jobs() == 2
    # A session that is still open but ends in a minute: the buyer gets one with time to pay.
    newest = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
    assert newest is not None
    db.session.execute(
        update(Job)
        .where(Job.id == newest.id)
        .values(checkout_expires_at=utcnow() + dt.timedelta(minutes=1))
    )
    db.session.commit()
    third = _buy(client, attachment, "hal@example.com")
    assert third.headers["Location"] not in (first.headers["Location"], second.headers["Location"])
    assert _jobs() == 3


def test_pages_without_limits_skip_the_check_but_a_default_limit_still_holds() -> None:
    # The shop sets no default limit, so its pages skip Flask-Limiter's before_request check;
    # one that sets a default still gets it on every page, as with Flask-Limiter's own class.
    from flask_limiter.util import get_remote_address

    from storefront.extensions import Limiter

    def site(default_limits: list[str]) -> FlaskClient:
        shop = Flask(__name__)
        shop.config["RATELIMIT_STORAGE_URI"] = "memory://"
        limiter = Limiter(key_func=get_remote_address, default_limits=default_limits)
        limiter.init_app(shop)

        @shop.get("/page")
        def page() -> str:
            return "a page"

        @shop.get("/buy")
        @limiter.limit("1/minute")
        def buy() -> str:
            return "bought"

        return shop.test_client()

    unlimited = site([])
    assert [unlimited.get("/page").status_code for _ in range(5)] == [200] * 5
    assert [unlimited.get("/buy").status_code for _ in range(2)] == [200, 429]
    limited = site(["2/minute"])
    assert [limited.get("/page").status_code for _ in range(3)] == [200, 200, 429]
