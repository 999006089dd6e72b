"""Structured logs (LOG_FORMAT) and the request id that follows an order, on real parts."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq.job import Job as RQJob

from devservers.smtp_sink import SinkHandler, text_of
from devservers.stripe_local import LocalStripe
from storefront import create_app, logs
from storefront.config import ConfigError
from storefront.redaction import RedactSecrets, redact
from tests.conftest import LiveApp, WorkerProcess, config_as_environment, wait_until

ROOT = Path(__file__).resolve().parent.parent
JOB_ID = "0b1c2d3e-4f50-4a61-8b72-93a4b5c6d7e8"
TOKEN = "fedcba9876543210" * 4
SESSION = "cs_test_" + "Zq9" * 20
SIGNATURE = "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"


@pytest.fixture(autouse=True)
def fresh_log_context() -> Iterator[None]:
    """Each test starts in a thread whose log context no earlier request or task left set."""
    logs.clear_context()
    yield
    logs.clear_context()


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Apps (and the workers started like them) of this module log in JSON."""
    return {**app_config, "LOG_FORMAT": "json"}


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON object (a line that is not one fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _app_lines(text: str) -> list[dict[str, Any]]:
    """The log lines among what this test process printed (devservers print too)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _record(message: str, *args: object, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("smi.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(fields)
    return record


def _emit(fmt: str, record: logging.LogRecord) -> str:
    handler = logs.make_handler(fmt)
    return handler.format(record) if handler.filter(record) else ""


# The formatters and the redacting filter


def test_a_json_line_has_time_level_logger_message_and_the_known_context() -> None:
    with logs.task_fields(JOB_ID, None):
        line = json.loads(_emit("json", _record("job=%s refund=%s", JOB_ID, "re_1", amount=3)))
    assert dt.datetime.fromisoformat(line.pop("time")).utcoffset() == dt.timedelta(0)
    assert isinstance(line.pop("pid"), int)
    assert line == {
        "level": "WARNING",
        "logger": "smi.test",
        "message": f"job={JOB_ID} refund=re_1",
        "job_id": JOB_ID,
        "amount": 3,
    }


def test_the_job_named_in_a_message_is_its_job_id_when_nothing_else_says() -> None:
    line = json.loads(_emit("json", _record("job=%s completed", JOB_ID)))
    assert line["job_id"] == JOB_ID and "request_id" not in line and "rq_job_id" not in line


def test_a_line_with_a_traceback_and_line_breaks_is_still_one_json_line() -> None:
    try:
        raise ValueError(f"no file at /download/{TOKEN}\nsecond line \u2028")
    except ValueError:
        record = _record("failed:\n%s", "why")
        record.exc_info = sys.exc_info()
    text = _emit("json", record)
    assert len(text.splitlines()) == 1
    line = json.loads(text)
    assert line["message"] == "failed:\nwhy"
    assert "ValueError: no file at /download/[token]" in line["exception"]
    assert TOKEN not in text


def test_text_stays_readable_and_adds_the_context_the_message_does_not_say() -> None:
    record = _record("job=%s completed", JOB_ID, request_id="req-1", rq_job_id=f"upscale-{JOB_ID}")
    line = _emit("text", record)
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} WARNING smi.test job={JOB_ID} completed "
        rf"\[request_id=req-1 rq_job_id=upscale-{JOB_ID}\]",
        line,
    ), line
    assert _emit("text", _record("plain")).endswith(" WARNING smi.test plain")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_in_messages_arguments_and_fields(fmt: str) -> None:
    record = _record(
        "checkout session=%s; GET /download/%s; Stripe-Signature: t=1,v1=%s; password=%s; %s",
        SESSION,
        TOKEN,
        SIGNATURE,
        "hunter2",
        "redis://:s3cret@10.0.0.1:6379/0 whsec_abc123 sk_live_abc123",
        referer=f"https://shop.example.com/my-orders/{TOKEN}",
    )
    line = _emit(fmt, record)
    for secret in (SESSION, TOKEN, SIGNATURE, "hunter2", "s3cret", "whsec_abc123", "sk_live_abc1"):
        assert secret not in line
    for placeholder in (
        "cs_[session]",
        "/download/[token]",
        "v1=[signature]",
        "password=[redacted]",
    ):
        assert placeholder in line
    assert "redis://:[redacted]@10.0.0.1:6379/0" in line
    # A field is redacted on the record, whatever shows it: the JSON line does.
    assert record.__dict__["referer"] == "https://shop.example.com/my-orders/[token]"
    assert ("/my-orders/[token]" in line) == (fmt == "json")


def test_redaction_keeps_what_is_not_secret() -> None:
    text = f"job={JOB_ID} stripe_event=evt_1 http://127.0.0.1:5000/orders/{JOB_ID} 3 tokens: ok"
    assert redact(text) == text


def test_a_malformed_logging_call_is_left_for_logging_to_report() -> None:
    record = _record("%s and %s", "only one")
    assert RedactSecrets().filter(record) and record.args == ("only one",)


def test_log_format_must_be_text_or_json(app_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        create_app({**app_config, "LOG_FORMAT": "xml"})


# The request id


def test_a_sane_request_id_is_taken_and_sent_back(client: FlaskClient) -> None:
    for value in ("a", "req-1.abc_DEF", "x" * 64):
        response = client.get("/healthz", headers={"X-Request-ID": value})
        assert response.headers["X-Request-ID"] == value


@pytest.mark.parametrize("value", ["", "x" * 65, "two words", "a/b", "<script>", "é"])
def test_an_insane_request_id_is_replaced_by_a_new_one(client: FlaskClient, value: str) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": value})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_a_request_id_is_made_for_every_response_errors_included(client: FlaskClient) -> None:
    ids = [client.get(path).headers.get("X-Request-ID") for path in ("/healthz", "/nowhere")]
    assert client.get("/nowhere").status_code == 404
    assert all(i and re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1]


def test_a_request_logs_with_its_request_id_and_the_job_of_its_url(
    app: Flask, client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    app.config["STRIPE_WEBHOOK_SECRET"] = "whsec_test_secret"
    capsys.readouterr()
    headers = {"X-Request-ID": "req-42", "Stripe-Signature": f"t=1,v1={SIGNATURE}"}
    assert client.post("/webhooks/stripe", data=b"{}", headers=headers).status_code == 400
    lines = _app_lines(capsys.readouterr().out)
    refused = [line for line in lines if line["message"].startswith("stripe webhook refused")]
    assert refused and refused[0]["request_id"] == "req-42" and refused[0]["level"] == "WARNING"
    assert refused[0]["logger"] == "smi.webhooks" and "job_id" not in refused[0]
    with app.test_request_context(f"/orders/{JOB_ID}"):
        app.preprocess_request()
        logging.getLogger("smi.test").info("looked at")
    assert _app_lines(capsys.readouterr().out)[-1]["job_id"] == JOB_ID


def test_a_task_logs_with_its_rq_job_and_the_request_it_was_queued_by(redis_url: str) -> None:
    connection = Redis.from_url(redis_url)
    rq_job = RQJob.create(
        "worker.tasks.process_job",
        args=(JOB_ID,),
        id=f"upscale-{JOB_ID}",
        meta={"request_id": "r1"},
        connection=connection,
    )
    with logs.task_fields(JOB_ID, rq_job):
        line = json.loads(_emit("json", _record("upscaling")))
        assert logs.rq_meta() == {"request_id": "r1"}  # what it enqueues carries the id on
    assert (line["request_id"], line["job_id"], line["rq_job_id"]) == ("r1", JOB_ID, rq_job.id)
    connection.close()


# On real parts: the live app, a real RQ worker, the local Stripe; a real gunicorn


def _unredacted(text: str) -> list[str]:
    return [secret for secret in (TOKEN, SESSION, SIGNATURE) if secret in text]


@pytest.mark.slow
def test_one_order_is_followed_from_the_buy_button_to_the_mail_in_json_logs(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sqlalchemy import select

    from storefront.extensions import db
    from storefront.models import Job
    from tests.conftest import rq_jobs_ended
    from tests.factories import make_attachment

    worker = start_worker()  # with the app's settings: LOG_FORMAT=json
    attachment = make_attachment(live_app.app, width=120, height=90, title="Harbour")
    db.session.commit()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": "buyer@example.com"}
    response = requests.post(
        f"{live_app.url}/checkout",
        data=data,
        headers={"X-Request-ID": "buy-button-1"},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 303 and response.headers["X-Request-ID"] == "buy-button-1"
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).one()
    session_id = job.stripe_checkout_session_id
    assert session_id is not None
    stripe_local.pay(session_id)
    ready = smtp_sink.wait_for(1, timeout=30, where=lambda m: "ready" in str(m["Subject"]))
    wait_until(lambda: rq_jobs_ended(live_app.app.config["REDIS_URL"], job.job_id), timeout=30)
    link = re.search(r"/download/([0-9a-f]{64})", text_of(ready[0]))
    assert link is not None
    token = link.group(1)
    assert requests.get(f"{live_app.url}/download/{token}", timeout=10).status_code == 200

    app_lines = _app_lines(capsys.readouterr().out)
    checkout = [line for line in app_lines if line["logger"] == "smi.checkout"]
    assert checkout and checkout[0]["request_id"] == "buy-button-1"
    assert checkout[0]["job_id"] == job.job_id and "cs_[session] created" in checkout[0]["message"]
    paid = [line for line in app_lines if "type=checkout.session.completed" in line["message"]]
    assert len(paid) == 1 and paid[0]["job_id"] == job.job_id
    webhook_request = paid[0]["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", webhook_request)

    worker_lines = _json_lines(worker.log())  # every line of the worker is JSON
    tasks = [line for line in worker_lines if line.get("job_id") == job.job_id]
    by_rq_job = {line["rq_job_id"]: line for line in tasks if "rq_job_id" in line}
    assert f"upscale-{job.job_id}" in by_rq_job
    assert any(rq_id.startswith(f"email-paid-{job.job_id}") for rq_id in by_rq_job)
    assert any(rq_id.startswith(f"email-ready-{job.job_id}") for rq_id in by_rq_job)
    assert {line["request_id"] for line in by_rq_job.values()} == {webhook_request}
    assert any(line["message"] == f"job={job.job_id} completed" for line in tasks)
    assert any(line["logger"] == "rq.worker" for line in worker_lines)  # RQ's own, as JSON
    everything = json.dumps(app_lines) + worker.log()
    assert token not in everything and session_id not in everything
    assert "/download/[token]" in json.dumps(app_lines)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def _get(socket_path: Path, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    connection = _UnixHTTPConnection(socket_path)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()


@pytest.fixture
def json_gunicorn(app: Flask, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """gunicorn with gunicorn.conf.py (2 workers), LOG_FORMAT=json, on a unix socket: yields the
    socket and gunicorn's output (stdout and stderr) file."""
    socket_path, log_path = tmp_path / "gunicorn.sock", tmp_path / "gunicorn.log"
    env = config_as_environment({**app.config, "LOG_FORMAT": "json"})
    env.update(GUNICORN_BIND=f"unix:{socket_path}", WEB_CONCURRENCY="2", GUNICORN_THREADS="2")
    # The access line also shows the Stripe-Signature header, which must come out redacted.
    access_format = '%(h)s "%(r)s" %(s)s %({stripe-signature}i)s'
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
            + ["--access-logformat", access_format],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: process.poll() is not None or socket_path.exists(), timeout=30)
        assert process.poll() is None, log_path.read_text()
        yield socket_path, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_gunicorn_writes_its_own_and_its_access_lines_as_json_redacted(
    json_gunicorn: tuple[Path, Path],
) -> None:
    socket_path, log_path = json_gunicorn
    headers = {"X-Request-ID": "gunicorn-1", "Stripe-Signature": f"t=1,v1={SIGNATURE}"}
    path = f"/download/{TOKEN}/file?session_id={SESSION}"
    response = wait_until(lambda: _get(socket_path, path, headers), timeout=30)
    assert response.status == 404 and response.getheader("X-Request-ID") == "gunicorn-1"
    made = _get(socket_path, "/healthz", {}).getheader("X-Request-ID")

    def access_lines() -> list[dict[str, Any]]:
        lines = _json_lines(log_path.read_text())  # every line gunicorn wrote is JSON
        return [line for line in lines if line["logger"] == "gunicorn.access"]

    lines = wait_until(lambda: len(access_lines()) >= 2 and access_lines())
    download = next(line for line in lines if line.get("request_id") == "gunicorn-1")
    assert download["path"] == "/download/[token]/file?session_id=[session]"
    assert (download["method"], download["status"], download["level"]) == ("GET", 404, "INFO")
    assert "GET /download/[token]/file?session_id=[session] HTTP/1.1" in download["message"]
    assert download["message"].endswith(" 404 [redacted]")
    assert any(line.get("request_id") == made and line["path"] == "/healthz" for line in lines)
    output = log_path.read_text()
    assert not _unredacted(output)
    assert any(
        line["logger"] == "gunicorn.error" and "Booting worker" in line["message"]
        for line in _json_lines(output)
    )
