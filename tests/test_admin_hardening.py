"""Issue 12: sign-in that strangers cannot use to lock the owner out, counters that count every
failure, CSV exports a spreadsheet will not run, and numeric parameters that never answer 500.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select

from storefront.accounts.admins import account_key, address_key
from storefront.extensions import db
from storefront.maintenance import archive
from storefront.models import AdminAction, AdminUser, AppSetting, Job, SignInThrottle, utcnow
from storefront.settings_editor import setting_rows
from tests import admin_helpers
from tests.admin_helpers import ADMIN_EMAIL, ADMIN_PASSWORD, completed_job, text
from tests.conftest import LiveApp
from tests.factories import make_attachment, make_job

admin_user = admin_helpers.admin_user
admin_client = admin_helpers.admin_client

OWNER_ADDRESS = "192.0.2.10"


def attempt(
    app: Flask, address: str, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD
) -> Any:
    """One sign-in attempt from `address` (each attempt in a fresh client, as strangers are)."""
    return app.test_client().post(
        "/admin/login",
        data={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


def counter(key: str) -> SignInThrottle | None:
    """A throttle row as the database has it now."""
    db.session.expire_all()
    return db.session.scalar(select(SignInThrottle).where(SignInThrottle.key == key))


def move_back(seconds: int) -> None:
    """Pretend every failure and lock happened `seconds` earlier."""
    for row in db.session.scalars(select(SignInThrottle)):
        if row.last_failure_at is not None:
            row.last_failure_at -= dt.timedelta(seconds=seconds)
        if row.locked_until is not None:
            row.locked_until -= dt.timedelta(seconds=seconds)
    db.session.commit()


# Sign-in: strangers cannot lock the owner out ---------------------------------------------------


@pytest.mark.slow  # 37 sign-ins, each a scrypt check: about 4 s a case
@pytest.mark.parametrize("delay", [2, 0], ids=["slowed", "never slowed"])
def test_failures_from_other_addresses_never_refuse_the_owner(
    app: Flask, admin_user: AdminUser, delay: int
) -> None:
    # The shipped policy (slowed after 3 failures, locked after 8), with or without waits.
    app.config.update(ADMIN_LOGIN_DELAY_SECONDS=delay)
    guesses = [
        attempt(app, f"198.51.100.{n}", ADMIN_EMAIL, f"guess {n}").status_code for n in range(12)
    ]
    others = [
        attempt(app, f"203.0.113.{n}", f"someone{n}@shop.test", "guess").status_code
        for n in range(24)
    ]
    # The owner, from an address that has not failed, signs in at once.
    owner = attempt(app, OWNER_ADDRESS)
    assert owner.status_code == 303, text(owner)
    assert owner.headers["Location"] == "/admin/"
    # Every stranger's guess was looked at and counted; the owner's success cleared the account's.
    assert guesses == [401] * 12
    assert others == [401] * 24
    assert counter(account_key(ADMIN_EMAIL)) is None
    assert counter(address_key("198.51.100.0")).failures == 1  # type: ignore[union-attr]


def test_an_address_that_failed_waits_the_accounts_delay_at_most_the_longest(
    app: Flask, admin_user: AdminUser
) -> None:
    app.config.update(
        ADMIN_LOGIN_SLOW_AFTER=2, ADMIN_LOGIN_DELAY_SECONDS=30, ADMIN_LOGIN_MAX_DELAY_SECONDS=45
    )
    for n in range(6):
        assert attempt(app, f"198.51.100.{n}", ADMIN_EMAIL, "guess").status_code == 401
    # The owner mistypes once: their next try waits the account's delay (30 s doubled 4 times,
    # capped at 45 s), counted from their own failure.
    assert attempt(app, OWNER_ADDRESS, ADMIN_EMAIL, "a typo").status_code == 401
    slowed = attempt(app, OWNER_ADDRESS)
    assert slowed.status_code == 429
    assert "Wait 45 seconds" in text(slowed)
    move_back(46)
    assert attempt(app, OWNER_ADDRESS).status_code == 303


def test_an_address_that_fails_too_often_is_locked_for_every_account(
    app: Flask, admin_user: AdminUser
) -> None:
    app.config.update(ADMIN_LOGIN_DELAY_SECONDS=0, ADMIN_LOGIN_LOCK_AFTER=3)
    statuses = [
        attempt(app, "203.0.113.5", f"someone{n}@shop.test", "guess").status_code for n in range(3)
    ]
    assert statuses == [401, 401, 429]
    locked = attempt(app, "203.0.113.5")
    assert locked.status_code == 429
    assert "locked for this address" in text(locked) and "15 minutes" in text(locked)
    row = counter(address_key("203.0.113.5"))
    assert row is not None and row.failures == 3 and row.locked_until is not None
    assert db.session.scalar(select(AdminAction).where(AdminAction.action == "sign_in_locked"))
    # Another address is not concerned; the locked one gets in once the lock is over.
    assert attempt(app, OWNER_ADDRESS).status_code == 303
    move_back(15 * 60 + 1)
    assert attempt(app, "203.0.113.5").status_code == 303


def simultaneous_guesses(live_app: LiveApp, count: int = 8) -> list[int]:
    """Post `count` wrong passwords to the served app at the same moment; their statuses."""
    start = threading.Barrier(count)
    statuses: list[int] = []

    def guess(n: int) -> None:
        with requests.Session() as http:
            start.wait(timeout=10)
            response = http.post(
                f"{live_app.url}/admin/login",
                data={"email": ADMIN_EMAIL, "password": f"wrong guess {n}"},
                timeout=30,
            )
            statuses.append(response.status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(statuses)


def test_simultaneous_wrong_passwords_are_each_counted(
    live_app: LiveApp, admin_user: AdminUser
) -> None:
    live_app.app.config.update(ADMIN_LOGIN_SLOW_AFTER=100, ADMIN_LOGIN_LOCK_AFTER=1000)
    assert simultaneous_guesses(live_app) == [401] * 8
    assert counter(account_key(ADMIN_EMAIL)).failures == 8  # type: ignore[union-attr]
    assert counter(address_key("127.0.0.1")).failures == 8  # type: ignore[union-attr]


def test_a_burst_from_one_address_gets_no_more_guesses_than_the_lock_allows(
    live_app: LiveApp, admin_user: AdminUser
) -> None:
    live_app.app.config.update(ADMIN_LOGIN_DELAY_SECONDS=0, ADMIN_LOGIN_LOCK_AFTER=3)
    # Only three attempts reach the password check: two are told it is wrong, the third that
    # the address is now locked; the other five are refused outright.
    assert simultaneous_guesses(live_app) == [401, 401] + [429] * 6
    locks = db.session.scalars(select(AdminAction).where(AdminAction.action == "sign_in_locked"))
    assert len(locks.all()) == 1


def test_unlock_admin_clears_the_accounts_counters_and_an_addresss(
    app: Flask, admin_user: AdminUser, runner: FlaskCliRunner
) -> None:
    app.config.update(ADMIN_LOGIN_DELAY_SECONDS=0, ADMIN_LOGIN_LOCK_AFTER=2)
    for address in ("203.0.113.1", "203.0.113.1", "203.0.113.2"):
        attempt(app, address, ADMIN_EMAIL, "guess")
    assert attempt(app, "203.0.113.1").status_code == 429

    result = runner.invoke(args=["smi", "unlock-admin", "--email", ADMIN_EMAIL.upper()])
    assert result.exit_code == 0, result.output
    assert f"Cleared 3 failed sign-ins of {ADMIN_EMAIL}." in result.output
    assert counter(account_key(ADMIN_EMAIL)) is None
    assert counter(address_key("203.0.113.1")) is not None  # the address was not named
    assert attempt(app, "203.0.113.1").status_code == 429

    result = runner.invoke(
        args=["smi", "unlock-admin", "--email", ADMIN_EMAIL, "--address", "203.0.113.1"]
    )
    assert result.exit_code == 0, result.output
    assert f"No failed sign-ins of {ADMIN_EMAIL} to clear." in result.output
    assert "Cleared 2 failed sign-ins from 203.0.113.1, and its lock." in result.output
    assert counter(address_key("203.0.113.1")) is None
    assert counter(address_key("203.0.113.2")) is not None
    audit = db.session.scalars(
        select(AdminAction).where(AdminAction.action == "admin_unlocked").order_by(AdminAction.id)
    ).all()
    assert [(row.admin, row.target) for row in audit] == [("cli", ADMIN_EMAIL)] * 2
    assert "203.0.113.1" in audit[1].detail
    assert attempt(app, "203.0.113.1").status_code == 303

    unknown = runner.invoke(args=["smi", "unlock-admin", "--email", "nobody@shop.test"])
    assert unknown.exit_code != 0
    assert "no admin account with the email nobody@shop.test" in unknown.output


# CSV exports never carry a formula ---------------------------------------------------------------

FORMULAS = {
    "email": "=cmd|' /C calc'!A0@x.com",
    "refund_reason": "+SUM(A1:A9)",
    "error_message": "-2+3",
    "upsampler_job_id": "@SUM(1+1)",
    "upscaled_url": "\t=1+1",
    "stripe_checkout_session_id": "\r=1+1",
}


def _formula_job(app: Flask, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "status": "completed",
        "payment_status": "paid",
        "amount_charged": Decimal("7.68"),
        "credits_used": -3,  # a genuine (if odd) negative number stays a number
    }
    job = make_job(make_attachment(app), **(values | FORMULAS | fields))
    db.session.commit()
    return job


def _assert_plain(row: dict[str, str]) -> None:
    for column, value in FORMULAS.items():
        assert row[column] == "'" + value, column
    assert row["amount_charged"] == "7.68"
    assert row["credits_used"] == "-3"


def test_job_list_csv_carries_no_formula(app: Flask, admin_client: FlaskClient) -> None:
    _formula_job(app)
    response = admin_client.get("/admin/jobs.csv")
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True), newline="")))
    assert len(rows) == 1
    _assert_plain(rows[0])


def test_archive_csv_carries_no_formula_and_json_lines_stay_exact(
    app: Flask, tmp_path: Path
) -> None:
    old = utcnow() - dt.timedelta(days=400)
    first = _formula_job(app, created_at=old, download_expires_at=old).job_id
    target = tmp_path / "archive.csv"
    report = archive.archive_jobs(older_than_days=365, export_path=target, dry_run=False)
    assert report.counts["exported"] == 1
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["job_id"] for row in rows] == [first]
    _assert_plain(rows[0])
    # JSON Lines is no spreadsheet's format: its values are kept exactly.
    second = _formula_job(app, created_at=old, download_expires_at=old).job_id
    lines = tmp_path / "archive.jsonl"
    archive.archive_jobs(older_than_days=365, export_path=lines, dry_run=False)
    record = json.loads(lines.read_text(encoding="utf-8"))
    assert record["job_id"] == second
    assert record["email"] == FORMULAS["email"]


# Numeric parameters: a clamp or a clear 400, never a 500 -----------------------------------------

ABSURD = ["1e22", "-1", "99999999999999999999", "abc", "", "NaN", "-0", "1.5"]
ABSURD_DATES = [*ABSURD, "9999-12-31", "0001-01-01", "2026-02-30", "99999-01-01"]


@pytest.mark.parametrize("value", ABSURD)
def test_page_numbers_are_bounded(
    app: Flask, admin_client: FlaskClient, admin_user: AdminUser, value: str
) -> None:
    completed_job(app)
    audit = admin_client.get(f"/admin/audit?page={value}")
    assert audit.status_code == 200, value
    jobs = admin_client.get(f"/admin/jobs?page={value}")
    assert jobs.status_code == 200, value
    if value == "99999999999999999999":
        # Clamped: the audit log's last possible page (empty), the job list's last page.
        assert "Nothing yet." in text(audit) and "page=999999" in text(audit)
    else:
        # Malformed: the first page.
        assert "signed_in" in text(audit) and "page=" not in text(audit)
    assert "1 job. Times are UTC." in text(jobs)
    export = admin_client.get(f"/admin/jobs.csv?page={value}")
    assert export.status_code == 200
    assert len(export.get_data(as_text=True).splitlines()) == 2


@pytest.mark.parametrize("value", ABSURD_DATES)
def test_dates_are_bounded(app: Flask, admin_client: FlaskClient, value: str) -> None:
    completed_job(app)
    for query in (f"from={value}", f"to={value}", f"from={value}&to={value}"):
        dashboard = admin_client.get(f"/admin/?{query}")
        assert dashboard.status_code == 200, query
        jobs = admin_client.get(f"/admin/jobs?{query}")
        assert jobs.status_code == 200, query
        export = admin_client.get(f"/admin/jobs.csv?{query}")
        body = export.get_data(as_text=True)
        if value:
            # A malformed filter is named on the page; a download refuses rather than ignore it.
            assert "between 2000-01-01 and 2999-12-31" in text(dashboard), query
            assert "between 2000-01-01 and 2999-12-31" in text(jobs), query
            assert export.status_code == 400, query
            assert "between 2000-01-01 and 2999-12-31" in html.unescape(body)
        else:
            assert export.status_code == 200 and len(body.splitlines()) == 2


def test_dates_in_range_still_filter(app: Flask, admin_client: FlaskClient) -> None:
    completed_job(app)
    today = utcnow().date()
    export = admin_client.get(f"/admin/jobs.csv?from={today}&to={today}")
    assert export.status_code == 200
    assert len(export.get_data(as_text=True).splitlines()) == 2
    page = text(admin_client.get("/admin/jobs?from=2999-12-31"))
    assert "0 jobs" in page and "between" not in page
    dashboard = admin_client.get("/admin/?from=2000-01-01&to=2000-01-02")
    assert dashboard.status_code == 200 and "between" not in text(dashboard)


@pytest.mark.parametrize("value", [*ABSURD, "3651", "0"])
def test_archive_age_is_bounded(app: Flask, admin_client: FlaskClient, value: str) -> None:
    preview = admin_client.get(f"/admin/maintenance/archive?older_than={value}")
    assert preview.status_code == 200, value
    assert "from 1 to 3650" in text(preview)
    run = admin_client.post(
        "/admin/maintenance/archive", data={"older_than": value, "request_id": "r1"}
    )
    assert run.status_code == 303
    assert run.headers["Location"].endswith("/admin/maintenance/archive")
    assert db.session.scalar(select(AdminAction).where(AdminAction.action == "archive")) is None


@pytest.mark.parametrize("value", [*ABSURD, "169", "0"])
def test_extend_hours_are_bounded(app: Flask, admin_client: FlaskClient, value: str) -> None:
    job = completed_job(app)
    before = job.download_expires_at
    response = admin_client.post(
        f"/admin/jobs/{job.job_id}/actions/extend", data={"hours": value, "request_id": "r1"}
    )
    assert response.status_code == 400, value
    assert "1 to 168 hours" in text(response) or "number of hours" in text(response)
    db.session.expire_all()
    assert db.session.get(Job, job.id).download_expires_at == before  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    ["1e22", "-1", "99999999999999999999", "abc", "NaN", "-0", "1e30", "Infinity", "sNaN", "0.001"],
)
def test_refund_amounts_are_bounded(app: Flask, admin_client: FlaskClient, value: str) -> None:
    job = completed_job(app)
    response = admin_client.post(
        f"/admin/jobs/{job.job_id}/actions/refund",
        data={"amount": value, "reason": "test", "request_id": "r1"},
    )
    assert response.status_code in (400, 409), value
    assert "amount" in text(response) or "A refund must be between" in text(response)
    db.session.expire_all()
    refreshed = db.session.get(Job, job.id)
    assert refreshed is not None and refreshed.refund_amount is None
    assert refreshed.payment_status == "paid"


@pytest.mark.parametrize("value", ["1e22", "-1", "99999999999999999999", "abc", "0"])
def test_catalog_ids_are_bounded(app: Flask, admin_client: FlaskClient, value: str) -> None:
    for url in (f"/admin/catalog/posts/{value}", f"/admin/catalog/images/{value}"):
        response = admin_client.get(url)
        assert response.status_code == 404, (url, response.status_code)
    removal = admin_client.post(f"/admin/catalog/images/{value}/remove", data={"confirm": "yes"})
    assert removal.status_code == 404
    upload = admin_client.post(f"/admin/catalog/posts/{value}/images")
    assert upload.status_code == 404


def _settings_form(app: Flask, **changes: str) -> dict[str, Any]:
    """The settings form as the page submits it, with the values in force and `changes`."""
    values: dict[str, Any] = {}
    for row in setting_rows(app):
        if row.item.kind == "resolutions":
            values[row.item.name] = list(row.value)
        elif row.item.kind == "bool":
            if row.value:
                values[row.item.name] = "y"
        else:
            values[row.item.name] = row.raw
    return values | changes


@pytest.mark.parametrize(
    "value", ["1e22", "-1", "99999999999999999999", "abc", "", "NaN", "1e400", "Infinity", "sNaN"]
)
def test_numeric_settings_are_bounded(app: Flask, admin_client: FlaskClient, value: str) -> None:
    assert admin_client.post("/admin/settings", data=_settings_form(app)).status_code == 303
    numeric = [row.item.name for row in setting_rows(app) if row.item.kind in ("int", "decimal")]
    assert "MARKUP_PERCENT" in numeric and "DOWNLOAD_MAX_COUNT" in numeric
    for name in numeric:
        response = admin_client.post("/admin/settings", data=_settings_form(app, **{name: value}))
        assert response.status_code == 400, (name, value, response.status_code)
        assert "Nothing was saved" in text(response)
        assert db.session.scalars(select(AppSetting)).all() == []


@pytest.mark.parametrize("value", ["1e22", "-1", "99999999999999999999", "abc", ""])
def test_public_pages_bound_their_numbers(app: Flask, client: FlaskClient, value: str) -> None:
    assert client.get(f"/images/{value}").status_code == 404
    checkout = client.post("/checkout", data={"attachment_id": value, "resolution": "4x"})
    assert checkout.status_code in (400, 404), checkout.status_code
