"""Signing in to /admin: passwords, throttling, CSRF, guarded routes, the session cookie."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select

from storefront import create_app
from storefront.extensions import db
from storefront.models import AdminAction, AdminUser, SignInThrottle
from tests import admin_helpers
from tests.admin_helpers import (
    ADMIN_EMAIL,
    ADMIN_NAME,
    ADMIN_PASSWORD,
    completed_job,
    csrf_token,
    fresh,
    make_admin,
    request_id,
    sign_in,
    text,
)

admin_user = admin_helpers.admin_user
csrf_app = admin_helpers.csrf_app


def test_right_password_signs_in_and_shows_the_dashboard(app: Flask, admin_user: AdminUser) -> None:
    client = app.test_client()
    response = sign_in(client)
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/"
    page = client.get("/admin/")
    assert page.status_code == 200
    assert ADMIN_NAME in text(page)
    assert db.session.get(AdminUser, admin_user.id).last_login_at is not None  # type: ignore[union-attr]


def test_password_is_stored_hashed(app: Flask, admin_user: AdminUser) -> None:
    assert ADMIN_PASSWORD not in admin_user.password_hash
    assert admin_user.password_hash.startswith(("scrypt:", "pbkdf2:"))


@pytest.mark.parametrize(
    ("email", "password"),
    [(ADMIN_EMAIL, "not the password"), ("nobody@shop.test", ADMIN_PASSWORD)],
    ids=["wrong password", "unknown email"],
)
def test_wrong_credentials_are_refused_alike(
    app: Flask, admin_user: AdminUser, email: str, password: str
) -> None:
    client = app.test_client()
    response = sign_in(client, email, password)
    assert response.status_code == 401
    assert "don't match an admin account" in text(response)
    assert client.get("/admin/").status_code == 302


def test_passwords_never_reach_the_log(
    app: Flask, admin_user: AdminUser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    sign_in(client, ADMIN_EMAIL, "a wrong guess 123")
    sign_in(client)
    assert "a wrong guess 123" not in caplog.text
    assert ADMIN_PASSWORD not in caplog.text


def test_repeated_failures_slow_sign_in_down(app: Flask, admin_user: AdminUser) -> None:
    app.config.update(ADMIN_LOGIN_SLOW_AFTER=2, ADMIN_LOGIN_DELAY_SECONDS=30)
    client = app.test_client()
    assert sign_in(client, ADMIN_EMAIL, "guess one").status_code == 401
    assert sign_in(client, ADMIN_EMAIL, "guess two").status_code == 401
    slowed = sign_in(client)  # even the right password waits its turn
    assert slowed.status_code == 429
    assert "Wait 30 seconds" in text(slowed)
    # Once the wait is over, the right password works and clears the count.
    for row in db.session.scalars(select(SignInThrottle)):
        row.last_failure_at = row.last_failure_at - dt.timedelta(seconds=31)  # type: ignore[operator]
    db.session.commit()
    assert sign_in(client).status_code == 303
    assert db.session.scalars(select(SignInThrottle)).all() == []


def test_many_failures_lock_the_address_for_a_while(app: Flask, admin_user: AdminUser) -> None:
    app.config.update(ADMIN_LOGIN_DELAY_SECONDS=0, ADMIN_LOGIN_LOCK_AFTER=4)
    client = app.test_client()
    statuses = [sign_in(client, ADMIN_EMAIL, f"guess {n}").status_code for n in range(4)]
    assert statuses == [401, 401, 401, 429]
    locked = sign_in(client)
    assert locked.status_code == 429
    assert "locked for this address" in text(locked)
    assert "15 minutes" in text(locked)
    assert client.get("/admin/").status_code == 302
    assert db.session.scalar(select(AdminAction).where(AdminAction.action == "sign_in_locked"))
    # After the lock, the right password works again.
    for row in db.session.scalars(select(SignInThrottle)):
        if row.locked_until is not None:
            row.locked_until = row.locked_until - dt.timedelta(minutes=16)
    db.session.commit()
    assert sign_in(client).status_code == 303


def test_one_address_trying_many_accounts_is_locked_too(app: Flask, admin_user: AdminUser) -> None:
    app.config.update(ADMIN_LOGIN_DELAY_SECONDS=0, ADMIN_LOGIN_LOCK_AFTER=2)
    client = app.test_client()
    statuses = [sign_in(client, f"someone{n}@shop.test", "guess").status_code for n in range(6)]
    assert statuses[-1] == 429
    assert sign_in(client).status_code == 429


def test_next_goes_back_to_the_page_asked_for_but_never_off_site(
    app: Flask, admin_user: AdminUser
) -> None:
    client = app.test_client()
    redirect = client.get("/admin/jobs?status=failed")
    assert redirect.status_code == 302
    assert redirect.headers["Location"].startswith("/admin/login?next=")
    response = client.post(
        "/admin/login",
        data={
            "email": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "next": "/admin/jobs?status=failed",
        },
    )
    assert response.headers["Location"] == "/admin/jobs?status=failed"
    other = app.test_client()
    response = other.post(
        "/admin/login",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "next": "https://evil.test/admin"},
    )
    assert response.headers["Location"] == "/admin/"


def _admin_rules(app: Flask) -> list[Any]:
    return [
        rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("admin.") and rule.endpoint != "admin.login"
    ]


def _fill(rule: Any, values: dict[str, Any]) -> str:
    url = str(rule.rule)
    for argument in rule.arguments:
        url = url.replace(f"<int:{argument}>", str(values[argument]))
        url = url.replace(f"<{argument}>", str(values[argument]))
    return url


def test_every_admin_route_is_guarded(app: Flask, admin_user: AdminUser) -> None:
    client = app.test_client()
    rules = _admin_rules(app)
    assert len(rules) >= 15
    for rule in rules:
        url = _fill(
            rule,
            {
                "job_id": "00000000-0000-0000-0000-000000000000",
                "action": "refund",
                "post_id": 1,
                "attachment_id": 1,
                "operation": "cleanup",
                "name": "x.jsonl",
                "rq_job_id": "upscale-x",
            },
        )
        if "GET" in rule.methods:
            response = client.get(url)
            assert response.status_code == 302, (rule.endpoint, response.status_code)
            assert response.headers["Location"].startswith("/admin/login?next=/admin")
        if "POST" in rule.methods:
            assert client.post(url).status_code == 403, rule.endpoint


def test_anonymous_post_changes_nothing(app: Flask, admin_user: AdminUser) -> None:
    job = completed_job(app)
    client = app.test_client()
    response = client.post(f"/admin/jobs/{job.job_id}/actions/revoke", data={"request_id": "x"})
    assert response.status_code == 403
    db.session.expire_all()
    assert job.download_token == "a" * 64
    assert db.session.scalars(select(AdminAction).where(AdminAction.action == "revoke")).all() == []


def test_sign_out_ends_the_session(app: Flask, admin_user: AdminUser) -> None:
    client = app.test_client()
    sign_in(client)
    assert client.get("/admin/").status_code == 200
    response = client.post("/admin/logout")
    assert response.status_code == 303
    assert client.get("/admin/").status_code == 302


def test_a_new_password_ends_other_sessions(
    app: Flask, admin_user: AdminUser, runner: FlaskCliRunner
) -> None:
    client = app.test_client()
    sign_in(client)
    result = runner.invoke(
        args=[
            "smi",
            "create-admin",
            "--email",
            ADMIN_EMAIL,
            "--password",
            "another long secret",
            "--reset-password",
        ]
    )
    assert result.exit_code == 0, result.output
    assert client.get("/admin/").status_code == 302
    assert sign_in(app.test_client(), password="another long secret").status_code == 303


def test_session_cookie_is_httponly_and_samesite(app: Flask, admin_user: AdminUser) -> None:
    client = app.test_client()
    cookie = sign_in(client).headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_session_cookie_is_secure_outside_development(
    app: Flask, app_config: dict[str, Any]
) -> None:
    production = create_app(
        {
            **app_config,
            "SMI_ENV": "production",
            "STRIPE_SECRET_KEY": "sk_test_x",
            "STRIPE_WEBHOOK_SECRET": "whsec_x",
        }
    )
    with production.app_context():
        make_admin()
        cookie = sign_in(production.test_client()).headers["Set-Cookie"]
        db.session.remove()
        db.engine.dispose()
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_forms_without_a_csrf_token_are_refused(csrf_app: Flask) -> None:
    with csrf_app.app_context():
        make_admin()
        job_id = completed_job(csrf_app).job_id
    client = csrf_app.test_client()
    missing = client.post("/admin/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert missing.status_code == 400
    token = csrf_token(text(client.get("/admin/login")))
    signed_in = client.post(
        "/admin/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token}
    )
    assert signed_in.status_code == 303
    # Signed in, an action or the settings form without its token is refused, and changes nothing.
    refused = client.post(f"/admin/jobs/{job_id}/actions/revoke", data={"request_id": "r1"})
    assert refused.status_code == 400
    assert "The form had expired" in text(refused)
    assert client.post("/admin/settings", data={"MARKUP_PERCENT": "100"}).status_code == 400
    with csrf_app.app_context():
        assert fresh(job_id).download_token == "a" * 64
        assert (
            db.session.scalars(select(AdminAction).where(AdminAction.action != "signed_in")).all()
            == []
        )
    # With the token from the confirmation page, the same action is done.
    confirm = text(client.get(f"/admin/jobs/{job_id}/actions/revoke"))
    done = client.post(
        f"/admin/jobs/{job_id}/actions/revoke",
        data={"request_id": request_id(confirm), "csrf_token": csrf_token(confirm)},
    )
    assert done.status_code == 303
    with csrf_app.app_context():
        assert fresh(job_id).download_token is None


def test_first_admin_comes_from_the_environment(app: Flask) -> None:
    app.config.update(ADMIN_EMAIL="First@Shop.test", ADMIN_PASSWORD="a first long password")
    client = app.test_client()
    assert client.get("/admin/login").status_code == 200
    user = db.session.scalars(select(AdminUser)).one()
    assert user.email == "first@shop.test"
    assert sign_in(client, "first@shop.test", "a first long password").status_code == 303


def test_create_admin_command(app: Flask, runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=[
            "smi",
            "create-admin",
            "--email",
            "Ana@Shop.test",
            "--name",
            "Ana",
            "--password",
            "a long enough secret",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "Admin created: ana@shop.test (Ana)" in result.output
    user = db.session.scalars(select(AdminUser).where(AdminUser.email == "ana@shop.test")).one()
    assert "a long enough secret" not in user.password_hash
    again = runner.invoke(
        args=[
            "smi",
            "create-admin",
            "--email",
            "ana@shop.test",
            "--password",
            "a long enough secret",
        ]
    )
    assert again.exit_code != 0 and "exists" in again.output
    short = runner.invoke(
        args=["smi", "create-admin", "--email", "bo@shop.test", "--password", "short"]
    )
    assert short.exit_code != 0 and "at least 10 characters" in short.output
    prompted = runner.invoke(
        args=["smi", "create-admin", "--email", "cy@shop.test"],
        input="prompted password!\nprompted password!\n",
    )
    assert prompted.exit_code == 0, prompted.output
    assert "prompted password!" not in prompted.output
