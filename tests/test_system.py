"""The system page (/admin/system) and the system alerts to ADMIN_EMAIL, on real Redis, real RQ
workers, a real SMTP sink and (one test) the local S3 store."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker, Worker
from rq.job import Job as RQJob
from rq.registry import FailedJobRegistry
from rq.worker import BaseWorker
from sqlalchemy import select

from devservers.smtp_sink import SinkHandler, text_of
from storefront import create_app
from storefront.extensions import db
from storefront.maintenance import alerts
from storefront.maintenance.alerts import check_alerts
from storefront.models import AdminAction, utcnow
from tests import admin_helpers
from tests.admin_helpers import csrf_token, sign_in, text
from tests.conftest import WorkerProcess, wait_until
from tests.factories import make_attachment, make_job
from worker.context import use_app
from worker.tasks import run_maintenance, sweep

admin_user = admin_helpers.admin_user
admin_client = admin_helpers.admin_client
csrf_app = admin_helpers.csrf_app

HEAD = "0013_job_locale"
QUEUE = ["queue"]


def explode(word: str) -> None:
    """An RQ task that always fails."""
    raise ValueError(f"cannot handle {word}")


def _workers(redis_url: str) -> list[BaseWorker]:
    connection = Redis.from_url(redis_url)
    try:
        return [w for w in Worker.all(connection=connection) if w.last_heartbeat]
    finally:
        connection.close()


def _audit(action: str) -> list[AdminAction]:
    db.session.expire_all()
    return list(db.session.scalars(select(AdminAction).where(AdminAction.action == action)))


def _alerts(sink: SinkHandler, prefix: str = "") -> list[EmailMessage]:
    return [m for m in sink.messages if str(m["Subject"]).startswith(f"[Sell My Images] {prefix}")]


# The page -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_page_shows_a_running_worker_with_its_heartbeat(
    app: Flask,
    admin_client: FlaskClient,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()
    found = wait_until(lambda: _workers(redis_url), timeout=20)
    assert worker.process.poll() is None
    page = admin_client.get("/admin/system")
    body = text(page)
    assert page.status_code == 200
    heartbeat = found[0].last_heartbeat.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert found[0].name in body and found[0].hostname in body
    assert heartbeat in body
    assert "upscale, default" in body
    assert "No worker is registered" not in body
    # The rest of the page: versions, storage, queues, the navigation.
    assert f"{HEAD}" in body and "up to date" in body
    assert 'id="app-version">0.1.0<' in body
    assert app.config["STORAGE_DIR"] in body and "Free space" in body
    assert '<a href="/admin/system" aria-current="page">System</a>' in body


def test_the_page_without_workers_and_with_a_waiting_job(
    app: Flask, admin_client: FlaskClient, redis_url: str
) -> None:
    queue = Queue("default", connection=Redis.from_url(redis_url))
    queue.enqueue(explode, "later", job_id="waiting-job")
    body = text(admin_client.get("/admin/system"))
    assert "No worker is registered" in body
    assert "<tr><td>default</td><td>1</td>" in body
    assert "<tr><td>upscale</td><td>0</td>" in body
    assert "none recorded" in body and "none yet" in body


def test_the_page_needs_a_signed_in_admin(client: FlaskClient) -> None:
    response = client.get("/admin/system")
    assert response.status_code == 302
    assert "/admin/login" in response.headers["Location"]
    assert client.post("/admin/system/failed/x/delete").status_code == 403


def test_redis_down_does_not_break_the_page(app_config: dict[str, Any], tmp_path: Path) -> None:
    down = create_app({**app_config, "REDIS_URL": f"unix://{tmp_path}/no-redis.sock"})
    with down.app_context():
        admin_helpers.make_admin()
        client = down.test_client()
        assert sign_in(client).status_code == 303
        page = client.get("/admin/system")
        body = text(page)
        db.session.remove()
        db.engine.dispose()
    assert page.status_code == 200
    assert "Redis is unreachable (ConnectionError" in body
    assert "up to date" in body  # what does not need Redis is still there


def test_the_last_sweep_and_maintenance_runs_are_shown(
    app: Flask, admin_client: FlaskClient
) -> None:
    use_app(app)
    try:
        assert sweep().startswith("swept smi:slot:sweep:")
        assert "expired files (did)" in run_maintenance()
    finally:
        use_app(None)
    body = text(admin_client.get("/admin/system"))
    sweep_line = body.split('id="last-sweep">')[1].split("</dd>")[0]
    assert (
        "queued 0, requeued 0, failed 0" in sweep_line
        and utcnow().strftime("%Y-%m-%d") in sweep_line
    )
    maintenance_line = body.split('id="last-maintenance">')[1].split("</dd>")[0]
    assert "expired files (did): files 0; leftovers (did): nothing" in maintenance_line


def test_a_failed_rq_job_is_requeued_then_deleted_from_the_page(
    csrf_app: Flask, admin_user: Any, redis_url: str
) -> None:
    connection = Redis.from_url(redis_url)
    queue = Queue("default", connection=connection)
    job = queue.enqueue(explode, "this", job_id="doomed-1")
    SimpleWorker([queue], connection=connection).work(burst=True)
    registry = FailedJobRegistry("default", connection=connection)
    assert job.id in registry

    client = csrf_app.test_client()
    login = client.get("/admin/login")
    client.post(
        "/admin/login",
        data={
            "email": admin_helpers.ADMIN_EMAIL,
            "password": admin_helpers.ADMIN_PASSWORD,
            "csrf_token": csrf_token(text(login)),
        },
    )
    page = text(client.get("/admin/system"))
    assert "doomed-1" in page and "test_system.explode" in page
    assert "ValueError: cannot handle this" in page
    assert "Failed RQ jobs (1)" in page

    def form_of(html: str, action: str) -> dict[str, str]:
        form = html.split(f'action="/admin/system/failed/doomed-1/{action}"')[1].split("</form>")[0]
        request_id = form.split('name="request_id" value="')[1].split('"')[0]
        return {"csrf_token": csrf_token(form), "request_id": request_id}

    # Without the CSRF token: refused, nothing changes.
    refused = client.post("/admin/system/failed/doomed-1/requeue", data={"request_id": "abc"})
    assert refused.status_code == 400 and job.id in registry

    requeue = form_of(page, "requeue")
    done = client.post("/admin/system/failed/doomed-1/requeue", data=requeue)
    assert done.status_code == 303
    after = text(client.get(done.headers["Location"]))
    assert "RQ job doomed-1 (test_system.explode) is back on the default queue." in after
    assert job.id not in registry and queue.get_job_ids() == ["doomed-1"]
    again = client.post("/admin/system/failed/doomed-1/requeue", data=requeue)
    assert "the form was sent twice, and done once" in text(client.get(again.headers["Location"]))
    assert queue.get_job_ids() == ["doomed-1"]

    SimpleWorker([queue], connection=connection).work(burst=True)  # it fails again
    page = text(client.get("/admin/system"))
    deleted = client.post("/admin/system/failed/doomed-1/delete", data=form_of(page, "delete"))
    assert "RQ job doomed-1 (test_system.explode) was deleted." in text(
        client.get(deleted.headers["Location"])
    )
    assert job.id not in registry and not RQJob.exists("doomed-1", connection=connection)
    assert "Failed RQ jobs (0)" in text(client.get("/admin/system"))
    stale = form_of(page, "delete") | {"request_id": "f" * 32}  # an older tab's form
    gone = client.post("/admin/system/failed/doomed-1/delete", data=stale)
    assert "RQ job doomed-1 no longer exists." in text(client.get(gone.headers["Location"]))

    with csrf_app.app_context():
        assert [(a.admin, a.target) for a in _audit("rq_requeue")] == [
            (admin_helpers.ADMIN_NAME, "doomed-1")
        ]
        assert [(a.admin, a.target) for a in _audit("rq_delete")] == [
            (admin_helpers.ADMIN_NAME, "doomed-1")
        ]
    connection.close()


def test_local_storage_that_cannot_be_written_is_shown(
    app: Flask, admin_client: FlaskClient
) -> None:
    body = text(admin_client.get("/admin/system"))
    assert 'id="storage-answers">yes<' in body
    folder = Path(app.config["STORAGE_DIR"])
    shutil.rmtree(folder)
    folder.write_text("a file where the folder was")
    body = text(admin_client.get("/admin/system"))
    assert f"no: cannot write in {folder}" in body
    assert "unreachable" in body


@pytest.mark.slow
def test_the_storage_section_on_s3(app_config: dict[str, Any], s3_settings: dict[str, str]) -> None:
    on_s3 = create_app({**app_config, **s3_settings})
    with on_s3.app_context():
        admin_helpers.make_admin()
        client = on_s3.test_client()
        assert sign_in(client).status_code == 303
        body = text(client.get("/admin/system"))
        db.session.remove()
        db.engine.dispose()
    assert f">{s3_settings['S3_BUCKET']}<" in body
    assert f">{s3_settings['S3_ENDPOINT_URL']}<" in body
    assert 'id="storage-answers">yes<' in body
    assert "Free space" not in body


# The alerts ---------------------------------------------------------------------------------


def test_a_paid_job_waiting_too_long_alerts_once_an_hour_then_clears(
    app: Flask, smtp_sink: SinkHandler
) -> None:
    now = utcnow()
    job = make_job(
        make_attachment(app),
        status="pending",
        payment_status="paid",
        paid_at=now - dt.timedelta(minutes=31),
    )
    db.session.commit()
    fresh = make_job(make_attachment(app), status="pending", payment_status="paid", paid_at=now)
    db.session.commit()
    assert check_alerts(app, now, QUEUE) == ["queue: alert"]
    [mail] = _alerts(smtp_sink)
    assert mail["Subject"] == "[Sell My Images] Alert: A paid job is waiting to be processed"
    assert mail["To"] == "owner@shop.test"
    assert "1 paid job(s) waiting longer than 30 minutes" in text_of(mail)
    assert "/admin/system" in text_of(mail)
    # Not a second within the hour; a reminder after it.
    assert check_alerts(app, now + dt.timedelta(minutes=59), QUEUE) == []
    assert len(_alerts(smtp_sink)) == 1
    assert check_alerts(app, now + dt.timedelta(minutes=61), QUEUE) == ["queue: reminder"]
    assert len(_alerts(smtp_sink)) == 2
    # It moves on: one "cleared" mail, then quiet.
    job.status = fresh.status = "processing"
    db.session.commit()
    assert check_alerts(app, now + dt.timedelta(minutes=62), QUEUE) == ["queue: cleared"]
    cleared = _alerts(smtp_sink, "Cleared")
    assert [m["Subject"] for m in cleared] == [
        "[Sell My Images] Cleared: A paid job is waiting to be processed"
    ]
    assert check_alerts(app, now + dt.timedelta(minutes=63), QUEUE) == []
    assert len(_alerts(smtp_sink)) == 3


@pytest.mark.slow
def test_no_worker_heartbeat_alerts_and_clears_with_real_workers(
    app: Flask, redis_url: str, smtp_sink: SinkHandler, start_worker: Callable[..., WorkerProcess]
) -> None:
    first = start_worker()
    wait_until(lambda: _workers(redis_url), timeout=20)
    assert check_alerts(app, utcnow(), ["workers"]) == []
    first.kill()  # its record stays in Redis with its last heartbeat, as after a crash
    later = utcnow() + dt.timedelta(minutes=11)
    assert check_alerts(app, later, ["workers"]) == ["workers: alert"]
    [mail] = _alerts(smtp_sink)
    assert mail["Subject"] == "[Sell My Images] Alert: No worker heartbeat"
    assert "1 worker(s) registered; the last heartbeat seen was at" in text_of(mail)
    assert check_alerts(app, later + dt.timedelta(minutes=30), ["workers"]) == []
    assert len(_alerts(smtp_sink)) == 1
    start_worker()
    wait_until(lambda: len(_workers(redis_url)) == 2, timeout=20)
    assert check_alerts(app, utcnow(), ["workers"]) == ["workers: cleared"]
    assert [m["Subject"] for m in _alerts(smtp_sink, "Cleared")] == [
        "[Sell My Images] Cleared: No worker heartbeat"
    ]


def test_no_worker_ever_alerts_after_the_minutes_from_the_first_check(
    app: Flask, smtp_sink: SinkHandler
) -> None:
    now = utcnow()
    assert check_alerts(app, now, ["workers"]) == []  # the clock starts here
    assert check_alerts(app, now + dt.timedelta(minutes=9), ["workers"]) == []
    assert check_alerts(app, now + dt.timedelta(minutes=11), ["workers"]) == ["workers: alert"]
    assert "no worker is registered" in text_of(_alerts(smtp_sink)[0])


def test_the_web_app_checks_the_workers_after_a_response_once_a_minute(
    app: Flask, client: FlaskClient, redis_url: str, smtp_sink: SinkHandler
) -> None:
    connection = Redis.from_url(redis_url)
    connection.set(
        alerts.HEARTBEAT_SEEN_KEY,
        (utcnow() - dt.timedelta(minutes=20)).replace(tzinfo=dt.UTC).timestamp(),
    )
    response = client.get("/healthz")
    assert _alerts(smtp_sink) == []  # nothing before the response is closed (sent)
    response.close()
    [mail] = _alerts(smtp_sink)
    assert mail["Subject"] == "[Sell My Images] Alert: No worker heartbeat"
    connection.delete(alerts.STATE_KEY.format("workers"), alerts.DUE_KEY)
    client.get("/healthz").close()  # within the minute: this process does not check again
    assert len(_alerts(smtp_sink)) == 1
    connection.close()


def test_the_database_unreachable_from_a_worker_alerts_and_clears(
    app: Flask, app_config: dict[str, Any], smtp_sink: SinkHandler, tmp_path: Path
) -> None:
    broken = create_app({**app_config, "DATABASE_URL": f"sqlite:///{tmp_path}/none/smi.db"})
    use_app(broken)
    try:
        with pytest.raises(Exception, match="unable to open database file"):
            sweep()
    finally:
        use_app(None)
    [mail] = _alerts(smtp_sink)
    assert mail["Subject"] == "[Sell My Images] Alert: The database is unreachable from a worker"
    assert "OperationalError: unable to open database file" in text_of(mail)
    use_app(app)
    try:
        assert sweep().startswith("swept")  # the next slot would be later; this one was given back
    finally:
        use_app(None)
    assert [m["Subject"] for m in _alerts(smtp_sink, "Cleared")] == [
        "[Sell My Images] Cleared: The database is unreachable from a worker"
    ]


def test_storage_unreachable_from_a_worker_alerts_and_the_cli_checks(
    app: Flask, smtp_sink: SinkHandler, runner: Any
) -> None:
    folder = Path(app.config["STORAGE_DIR"])
    shutil.rmtree(folder)
    folder.write_text("a file where the folder was")
    use_app(app)
    try:
        sweep()
    finally:
        use_app(None)
    [mail] = _alerts(smtp_sink)
    assert mail["Subject"] == "[Sell My Images] Alert: Storage is unreachable from a worker"
    assert f"cannot write in {folder}" in text_of(mail)
    folder.unlink()
    folder.mkdir()
    alerts.clear_note(app, "storage")  # as a worker's next probe does
    result = runner.invoke(args=["smi", "check-alerts"])
    assert "storage: cleared" in result.output
    assert len(_alerts(smtp_sink, "Cleared")) == 1
