"""Fixtures and helpers of the admin tests: an admin account, signed-in clients, CSRF tokens."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from storefront import create_app
from storefront.extensions import db
from storefront.models import AdminUser, Attachment, Job, utcnow
from tests.factories import make_attachment, make_job, store_bytes

ADMIN_EMAIL = "olive@shop.test"
ADMIN_PASSWORD = "correct horse battery staple"
ADMIN_NAME = "Olive Owner"
CSRF_PATTERN = re.compile(
    r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"'
)
REQUEST_ID_PATTERN = re.compile(r'name="request_id" (?:type="hidden" )?value="([0-9a-f]+)"')


def text(response: Any) -> str:
    """A response's body with HTML entities decoded, to look for sentences in."""
    return html.unescape(response.get_data(as_text=True))


@cache
def password_hash(password: str) -> str:
    """The app's hash of a test password, made once per run (scrypt takes 0.1 s a time)."""
    from storefront.accounts.admins import hash_password

    return hash_password(password)


def make_admin(
    email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD, name: str = ADMIN_NAME
) -> AdminUser:
    """An admin account, committed."""
    user = AdminUser(email=email, name=name, password_hash=password_hash(password))
    db.session.add(user)
    db.session.commit()
    return user


def sign_in(client: FlaskClient, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> Any:
    """Post the sign-in form (CSRF off in the test app)."""
    return client.post("/admin/login", data={"email": email, "password": password})


@pytest.fixture
def admin_user(app: Flask) -> AdminUser:
    """The shop owner's admin account."""
    return make_admin()


@pytest.fixture
def admin_client(app: Flask, admin_user: AdminUser) -> FlaskClient:
    """A test client signed in as the owner."""
    client = app.test_client()
    response = sign_in(client)
    assert response.status_code == 303, response.get_data(as_text=True)
    return client


@pytest.fixture
def csrf_app(app: Flask, app_config: dict[str, Any]) -> Iterator[Flask]:
    """An app like the test app (on its clean database), with CSRF checks on as in production.

    Its requests each get an app context of their own, as in production (Flask-WTF keeps the
    token in `g`). Tests push one for their own database work.
    """
    application = create_app({**app_config, "WTF_CSRF_ENABLED": True})
    yield application
    with application.app_context():
        db.engine.dispose()


def csrf_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = CSRF_PATTERN.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1) or match.group(2)


def request_id(html: str) -> str:
    """The one-time id of a confirmation form."""
    match = REQUEST_ID_PATTERN.search(html)
    assert match, "no request_id on the page"
    return match.group(1)


def fresh(job_id: str) -> Job:
    """The job as the database has it now."""
    db.session.expire_all()
    return db.session.scalars(db.select(Job).where(Job.job_id == job_id)).one()


def completed_job(
    app: Flask,
    attachment: Attachment | None = None,
    *,
    expires_in: dt.timedelta = dt.timedelta(hours=24),
    content: bytes = b"upscaled image bytes",
    **fields: Any,
) -> Job:
    """A paid, completed job with its file in storage and a link that works for a while."""
    attachment = attachment or make_attachment(app)
    now = utcnow()
    values: dict[str, Any] = {
        "status": "completed",
        "payment_status": "paid",
        "paid_at": now - dt.timedelta(hours=1),
        "completed_at": now - dt.timedelta(minutes=30),
        "stripe_payment_intent_id": "pi_test_completed",
        "download_token": "a" * 64,
        "download_expires_at": now + expires_in,
        "amount_charged": Decimal("1.92"),
    }
    job = make_job(attachment, **(values | fields))
    relative = f"deliveries/{job.job_id}/{attachment.post.slug}-{attachment.id}-4x.jpg"
    store_bytes(app, relative, content)
    job.upscaled_file_path = relative
    job.upscaled_file_size = len(content)
    db.session.commit()
    return job
