"""Error tracking: what reaches Sentry (the local envelope server), once, and what never does."""

from __future__ import annotations

import gzip
import json
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import sentry_sdk
from flask import Flask, request
from rq.job import Job as RQJob
from rq.job import JobStatus

from devservers.sentry_local import LocalSentry, parse_envelope
from storefront import create_app, error_tracking
from storefront.extensions import db
from storefront.queues import DEFAULT_QUEUE, get_queue
from tests.admin_helpers import completed_job
from tests.chaos_harness import WebServer
from tests.conftest import WorkerProcess

EMAIL = "buyer.secret@example.com"
TOKEN = "0123456789abcdef" * 4  # a download token's shape: 64 hex
SESSION = "cs_test_a1B2c3D4e5F6"
SECRETS = (EMAIL, TOKEN, SESSION, "Bearer-s3cret", "cookie-v4lue", "v1=deadbeef", "hunter2")
RQ = (sys.executable, "-m", "rq.cli")


def _no_secret_in(bodies: list[bytes], *secrets: str) -> None:
    for body in bodies:
        for secret in secrets:
            assert secret.encode() not in body, (secret, body[:2000])


@pytest.fixture
def tracked_app(app_config: dict[str, Any], sentry_local: LocalSentry) -> Iterator[Flask]:
    """An app that reports to the local envelope server, with a view that fails."""
    app_config.update(
        SENTRY_DSN=sentry_local.dsn, SENTRY_RELEASE="smi@test-1", SENTRY_ENVIRONMENT="staging"
    )
    application = create_app(app_config)

    @application.post("/download/<token>/explode")
    def explode(token: str) -> str:
        email = request.form["email"]
        raise RuntimeError(f"no order for {email} with {token}")

    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()


def _fail_a_view(app: Flask) -> Any:
    return app.test_client().post(
        f"/download/{TOKEN}/explode?session_id={SESSION}",
        data={"email": EMAIL, "password": "hunter2"},
        headers={
            "Authorization": "Bearer Bearer-s3cret",
            "Cookie": "session=cookie-v4lue",
            "Stripe-Signature": "t=1,v1=deadbeef",
            "Referer": f"http://shop.test/orders?email={EMAIL}",
        },
    )


def test_a_500_in_a_view_arrives_once_scrubbed_with_release_and_environment(
    tracked_app: Flask, sentry_local: LocalSentry
) -> None:
    response = _fail_a_view(tracked_app)
    assert response.status_code == 500
    assert "Something went wrong on our side" in response.get_data(as_text=True)

    sentry_sdk.flush()  # returns once every captured event has been sent and answered
    (event,) = sentry_local.events()
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "RuntimeError"
    assert exception["mechanism"] == {"type": "flask", "handled": False}
    assert exception["value"] == "no order for [email] with [token]"
    assert (event["release"], event["environment"]) == ("smi@test-1", "staging")
    assert event["request"]["url"] == "http://localhost/download/[token]/explode"
    assert event["request"]["query_string"] == "session_id=[session]"
    headers = {name.lower(): value for name, value in event["request"]["headers"].items()}
    assert {headers["authorization"], headers["stripe-signature"]} == {"[Filtered]"}
    assert "cookie" not in headers and headers["referer"] == "http://shop.test/orders?email=[email]"
    assert "data" not in event["request"] and "cookies" not in event["request"]
    # The view's local variables travel with its frame, scrubbed.
    frame = exception["stacktrace"]["frames"][-1]
    assert frame["function"] == "explode"
    assert frame["vars"] == {"email": "[Filtered]", "token": "[Filtered]"}
    _no_secret_in(sentry_local.raw_bodies(), *SECRETS)


def test_without_a_dsn_sentry_is_not_even_started(
    app_config: dict[str, Any], sentry_local: LocalSentry
) -> None:
    app = create_app(app_config)  # no SENTRY_DSN
    assert not sentry_sdk.is_initialized()

    @app.get("/explode")
    def explode() -> str:
        raise RuntimeError("boom")

    with app.app_context():
        assert app.test_client().get("/explode").status_code == 500
        db.engine.dispose()
    assert not sentry_sdk.is_initialized()
    sentry_sdk.flush()
    assert sentry_local.raw_bodies() == []


def test_breadcrumbs_keep_sql_but_not_its_parameters_and_log_lines_scrubbed() -> None:
    query = {
        "category": "query",
        "message": f"SELECT * FROM smi_jobs WHERE email = '{EMAIL}' AND download_token = ?",
        "data": {"db.params": [TOKEN], "db.paramstyle": "qmark"},
    }
    assert error_tracking.scrub_breadcrumb(query, {}) == {
        "category": "query",
        "message": "SELECT * FROM smi_jobs WHERE email = '[email]' AND download_token = ?",
        "data": {"db.paramstyle": "qmark"},
    }
    line = {"category": "smi.web", "message": f"GET /my-orders/{TOKEN}?session_id={SESSION}"}
    assert error_tracking.scrub_breadcrumb(line, {}) == {
        "category": "smi.web",
        "message": "GET /my-orders/[token]?session_id=[session]",
    }


def test_error_lines_without_a_traceback_are_breadcrumbs_not_events() -> None:
    assert error_tracking.scrub_event({"message": "x"}, {"log_record": object()}) is None
    with_traceback: Any = {"logentry": {"formatted": f"mail to {EMAIL} failed"}}
    hint = {"log_record": object(), "exc_info": (None, None, None)}
    assert error_tracking.scrub_event(with_traceback, hint) == {
        "logentry": {"formatted": "mail to [email] failed"}
    }


def test_a_malformed_dsn_stops_the_app_naming_the_setting(app_config: dict[str, Any]) -> None:
    from storefront.config import ConfigError

    app_config["SENTRY_DSN"] = "not a dsn"
    with pytest.raises(ConfigError, match="SENTRY_DSN"):
        create_app(app_config)


def test_release_is_the_installed_version_and_environment_smi_env() -> None:
    from importlib.metadata import version

    assert error_tracking.release({}) == f"sell-my-images@{version('sell-my-images')}"
    assert error_tracking.environment({"SMI_ENV": "production"}) == "production"
    assert error_tracking.environment({"SMI_ENV": "production", "SENTRY_ENVIRONMENT": "eu"}) == "eu"


def test_the_envelope_server_reads_gzip_and_plain_envelopes(sentry_local: LocalSentry) -> None:
    item = json.dumps({"event_id": "a" * 32, "level": "error", "message": "hello"}).encode()
    body = b'{"event_id":"' + b"a" * 32 + b'"}\n'
    body += json.dumps({"type": "event", "length": len(item)}).encode() + b"\n" + item + b"\n"
    body += b'{"type":"client_report"}\n{"discarded_events":[]}\n'
    assert parse_envelope(body)[1][1].json() == {"discarded_events": []}
    url = f"{sentry_local.url}/api/1/envelope/"
    plain = requests.post(url, data=body, timeout=5)
    packed = requests.post(url, data=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert (plain.status_code, packed.status_code) == (200, 200)
    assert [e["message"] for e in sentry_local.events()] == ["hello", "hello"]
    assert requests.post(url, data=b"{not json\n", timeout=5).status_code == 400
    assert (
        requests.post(f"{sentry_local.url}/api/1/store/", data=body, timeout=5).status_code == 404
    )


@pytest.mark.slow
def test_a_view_failing_under_gunicorn_arrives_once_from_its_worker(
    app: Flask, sentry_local: LocalSentry, tmp_path: Any
) -> None:
    from tests.conftest import config_as_environment

    # A database without its tables: the order page fails in whichever gunicorn worker takes it.
    config = dict(app.config, DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    config.update(SENTRY_DSN=sentry_local.dsn, SENTRY_RELEASE="smi@web-3")
    web = WebServer(tmp_path)
    web.start(config_as_environment(config))
    try:
        job_id = "5b0f6a52-0c8e-4d6e-9a43-1f2d3c4b5a69"
        response = requests.get(f"{web.url}/orders/{job_id}?session_id={SESSION}", timeout=10)
        assert response.status_code == 500
        assert "Something went wrong on our side" in response.text
    finally:
        web.close()  # gunicorn's workers exit, sending what they hold
    (event,) = sentry_local.events()
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "OperationalError" and "no such table" in exception["value"]
    assert "[parameters: [Filtered]]" in exception["value"] and job_id not in exception["value"]
    assert event["request"]["query_string"] == "session_id=[session]"
    assert (event["release"], event["environment"]) == ("smi@web-3", "development")
    _no_secret_in(sentry_local.raw_bodies(), SESSION)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _a_ready_mail_that_cannot_be_sent(app: Flask) -> tuple[str, str]:
    """Queue a completed job's ready mail as a task with no retry; return (job id, RQ job id)."""
    job = completed_job(app, email=EMAIL)
    rq_id = f"email-ready-{job.job_id}"
    # No Retry: the first failure is the last, so RQ records it as failed at once.
    get_queue(app, DEFAULT_QUEUE).enqueue(
        "worker.tasks.send_job_email", "ready", job.job_id, job_id=rq_id
    )
    return job.job_id, rq_id


def _worker_settings(sentry_local: LocalSentry | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"MAIL_PORT": _closed_port(), "MAINTENANCE_AT": "off"}
    if sentry_local is not None:
        settings.update(SENTRY_DSN=sentry_local.dsn, SENTRY_RELEASE="smi@worker-2")
        settings.update(SENTRY_ENVIRONMENT="staging")
    return settings


def _ran_to_the_end(app: Flask, worker: WorkerProcess, rq_id: str) -> None:
    assert worker.process.wait(timeout=40) == 0, worker.log()
    rq_job = RQJob.fetch(rq_id, connection=get_queue(app, DEFAULT_QUEUE).connection)
    assert rq_job.get_status() == JobStatus.FAILED, worker.log()
    assert "ConnectionRefusedError" in (rq_job.latest_result().exc_string or "")  # type: ignore[union-attr]


def _assert_one_job_event(sentry_local: LocalSentry, job_id: str, rq_id: str) -> None:
    (event,) = sentry_local.events()  # the worker has exited: nothing more is coming
    assert event["exception"]["values"][-1]["type"] == "ConnectionRefusedError"
    assert event["exception"]["values"][-1]["mechanism"]["type"] == "rq"
    assert event["tags"]["rq_job_id"] == rq_id and event["tags"]["job_id"] == job_id
    assert event["extra"]["rq-job"]["job_id"] == rq_id
    assert (event["release"], event["environment"]) == ("smi@worker-2", "staging")
    # The task issued a token and built the buyer's mail: both were in its frames' variables.
    _no_secret_in(sentry_local.raw_bodies(), EMAIL)
    for body in sentry_local.raw_bodies():
        assert not error_tracking.SECRET_TEXT[1][0].search(body.decode()), body[:2000]


@pytest.mark.slow
def test_a_job_that_fails_for_good_arrives_once_with_its_rq_job_id(
    app: Flask, sentry_local: LocalSentry, start_worker: Callable[..., WorkerProcess]
) -> None:
    job_id, rq_id = _a_ready_mail_that_cannot_be_sent(app)
    worker = start_worker(
        sys.executable, "-m", "worker", "--burst", **_worker_settings(sentry_local)
    )
    _ran_to_the_end(app, worker, rq_id)
    assert "error tracking on: release smi@worker-2, environment staging" in worker.log()
    _assert_one_job_event(sentry_local, job_id, rq_id)


@pytest.mark.slow
def test_plain_rq_worker_with_the_sentry_worker_class_reports_a_failed_job_once(
    app: Flask, sentry_local: LocalSentry, start_worker: Callable[..., WorkerProcess]
) -> None:
    job_id, rq_id = _a_ready_mail_that_cannot_be_sent(app)
    worker = start_worker(
        *RQ,
        "worker",
        "--burst",
        "--worker-class",
        "worker.error_tracking.SentryWorker",
        "--url",
        app.config["REDIS_URL"],
        DEFAULT_QUEUE,
        **_worker_settings(sentry_local),
    )
    _ran_to_the_end(app, worker, rq_id)
    _assert_one_job_event(sentry_local, job_id, rq_id)


@pytest.mark.slow
def test_a_worker_without_a_dsn_sends_nothing(
    app: Flask, sentry_local: LocalSentry, start_worker: Callable[..., WorkerProcess]
) -> None:
    _, rq_id = _a_ready_mail_that_cannot_be_sent(app)
    worker = start_worker(sys.executable, "-m", "worker", "--burst", **_worker_settings(None))
    _ran_to_the_end(app, worker, rq_id)
    assert "error tracking on" not in worker.log()
    assert sentry_local.raw_bodies() == []
