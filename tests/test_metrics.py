"""Prometheus metrics at GET /metrics: the token rule, the HTTP figures of several gunicorn
workers summed in one scrape, and the shop's figures from web and worker processes alike."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue
from sqlalchemy import select

from devservers.smtp_sink import SinkHandler, text_of
from devservers.stripe_local import LocalStripe, sign
from storefront import create_app, transactions
from storefront.extensions import db
from storefront.jobs import metrics
from storefront.jobs.outcomes import complete_job
from storefront.models import Job
from storefront.storage import StoredObject
from tests.conftest import (
    LiveApp,
    WorkerProcess,
    config_as_environment,
    rq_jobs_ended,
    wait_until,
)
from tests.factories import make_attachment, make_job

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token-0123456789abcdef"
WEBHOOK_SECRET = "whsec_test_secret"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The usual test settings, with a metrics token."""
    return {**app_config, "METRICS_TOKEN": TOKEN}


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by its name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, None when the scrape does not have it."""
    return samples.get((name, frozenset(labels.items())))


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


# The token rule


def test_metrics_answer_only_the_bearer_of_the_token(app: Flask, client: FlaskClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ):
        assert client.get("/metrics", headers=headers).status_code == 404, headers
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    assert answer.headers["Cache-Control"] == "no-store"
    assert "# TYPE smi_jobs gauge" in answer.get_data(as_text=True)

    app.config["METRICS_TOKEN"] = None  # unset: no way in
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer None"}).status_code == 404


def test_requests_are_counted_by_endpoint_and_status_never_by_path(client: FlaskClient) -> None:
    download_token = "d0" * 32
    before = parse(scrape(client))
    assert client.get(f"/download/{download_token}").status_code in (404, 410)
    assert client.get(f"/no/such/page/{download_token}z").status_code == 404
    assert client.get("/healthz").status_code == 200
    text = scrape(client)
    after = parse(text)

    def added(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    landing = client.get(f"/download/{download_token}").status_code
    assert added("smi_http_requests_total", endpoint="downloads.landing", status=str(landing)) == 1
    assert added("smi_http_requests_total", endpoint="unmatched", status="404") == 1
    assert added("smi_http_requests_total", endpoint="health.healthz", status="200") == 1
    assert added("smi_http_request_seconds_count", endpoint="health.healthz", status="200") == 1
    assert added("smi_http_requests_total", endpoint="metrics.scrape", status="200") == 1
    assert download_token not in text and TOKEN not in text
    endpoints = {dict(labels).get("endpoint") for (_name, labels) in after}
    assert all("/" not in (endpoint or "") for endpoint in endpoints), endpoints


# The shop's figures in Redis


def test_counts_wait_for_the_commit_and_a_rollback_forgets_them(
    app: Flask, client: FlaskClient
) -> None:
    metrics.count_on_commit(metrics.PAYMENTS, resolution="4x")
    transactions.rollback()
    metrics.count_on_commit(metrics.REFUNDS, kind="full")
    make_job(make_attachment(app), status="completed")
    assert value(parse(scrape(client)), "smi_refunds_total", kind="full") is None  # not yet
    transactions.commit()

    samples = parse(scrape(client))
    assert value(samples, "smi_payments_total", resolution="4x") is None
    assert value(samples, "smi_refunds_total", kind="full") == 1
    assert value(samples, "smi_jobs", status="completed") == 1
    assert value(samples, "smi_downloads_total") == 0  # without labels: there from the start


def test_upscale_seconds_is_a_histogram_shared_through_redis(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    for seconds in (0.5, 3, 4000):
        metrics.observe(metrics.UPSCALE_SECONDS, seconds, engine="local", resolution="4x")
    metrics.observe(metrics.UPSCALE_SECONDS, 2, engine="local")  # a label missing
    samples = parse(scrape(client))

    def bucket(le: str) -> float | None:
        name = "smi_upscale_seconds_bucket"
        return value(samples, name, engine="local", resolution="4x", le=le)

    assert (bucket("1.0"), bucket("2.0"), bucket("5.0"), bucket("3600.0")) == (1, 1, 2, 2)
    assert bucket("+Inf") == 3
    labels = {"engine": "local", "resolution": "4x"}
    assert value(samples, "smi_upscale_seconds_count", **labels) == 3
    assert value(samples, "smi_upscale_seconds_sum", **labels) == 4003.5
    assert "smi_upscale_seconds takes labels" in caplog.text
    assert not any(dict(labels).get("resolution") is None for (n, labels) in samples if "ups" in n)


def test_jobs_by_status_and_the_queues_are_read_at_scrape_time(
    app: Flask, client: FlaskClient
) -> None:
    attachment = make_attachment(app)
    for status in ("completed", "completed", "pending"):
        make_job(attachment, status=status)
    transactions.commit()
    queue = Queue("upscale", connection=Redis.from_url(app.config["REDIS_URL"]))
    first = queue.enqueue("worker.tasks.process_job", "job-a")
    queue.enqueue("worker.tasks.process_job", "job-b")
    first.enqueued_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    first.save()

    samples = parse(scrape(client))
    assert value(samples, "smi_jobs", status="completed") == 2
    assert value(samples, "smi_jobs", status="pending") == 1
    assert value(samples, "smi_jobs", status="failed") == 0
    assert value(samples, "smi_queue_depth", queue="upscale") == 2
    assert value(samples, "smi_queue_depth", queue="default") == 0
    assert 120 <= (value(samples, "smi_queue_oldest_seconds", queue="upscale") or 0) < 600
    assert value(samples, "smi_queue_oldest_seconds", queue="default") == 0


def test_webhook_events_are_counted_processed_duplicate_and_rejected(
    app: Flask, client: FlaskClient
) -> None:
    app.config["STRIPE_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    event = {
        "id": "evt_metrics_1",
        "type": "checkout.session.expired",
        "data": {"object": {"id": "cs_nobody", "object": "checkout.session"}},
    }
    payload = json.dumps(event)
    for header in (sign(payload, WEBHOOK_SECRET), sign(payload, WEBHOOK_SECRET), "t=1,v1=bad"):
        client.post(
            "/webhooks/stripe",
            data=payload,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )
    samples = parse(scrape(client))
    expired = "checkout.session.expired"
    assert value(samples, "smi_webhook_events_total", type=expired, outcome="processed") == 1
    assert value(samples, "smi_webhook_events_total", type=expired, outcome="duplicate") == 1
    assert value(samples, "smi_webhook_events_total", type="unverified", outcome="rejected") == 1


def test_provider_credits_and_refunds_are_counted_where_they_are_recorded(
    app: Flask, client: FlaskClient
) -> None:
    attachment = make_attachment(app)
    upscaled = make_job(attachment, status="processing", payment_status="paid")
    refunded = make_job(
        attachment, status="completed", payment_status="paid", stripe_payment_intent_id="pi_m1"
    )
    transactions.commit()
    output = StoredObject(f"deliveries/{upscaled.job_id}.jpg", 1000, dt.datetime.now(dt.UTC))
    assert complete_job(upscaled, output, credits_used=7, cost=Decimal("0.28")) == "completed"
    app.config["STRIPE_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    charge = {"payment_intent": "pi_m1", "amount_refunded": 20, "currency": "usd"}
    for event_id in ("evt_r1", "evt_r2"):  # Stripe tells of the same refund twice
        event = {"id": event_id, "type": "charge.refunded", "data": {"object": charge}}
        payload = json.dumps(event)
        answer = client.post(
            "/webhooks/stripe",
            data=payload,
            headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET)},
        )
        assert answer.status_code == 200

    samples = parse(scrape(client))
    assert value(samples, "smi_provider_credits_total") == 7
    assert value(samples, "smi_refunds_total", kind="partial") == 1
    assert value(samples, "smi_refunds_total", kind="full") is None
    stored = db.session.get(Job, refunded.id)
    assert stored is not None and stored.refund_amount == Decimal("0.20")


def test_redis_down_counts_nothing_and_breaks_nothing(
    app_config: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = create_app({**app_config, "REDIS_URL": f"unix://{tmp_path}/no-redis.sock"})
    with down.app_context():
        try:
            attachment = make_attachment(down)
            make_job(attachment, status="completed")
            metrics.count_on_commit(metrics.PAYMENTS, resolution="4x")
            with caplog.at_level(logging.WARNING, logger="smi.metrics"):
                transactions.commit()  # the commit stands; counting it failed
                metrics.count(metrics.EMAILS, kind="paid", outcome="sent")
            assert db.session.scalar(select(Job.status)) == "completed"
            assert "metrics not counted, Redis unavailable: ConnectionError" in caplog.text

            answer = down.test_client().get(
                "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert answer.status_code == 200
            samples = parse(answer.get_data(as_text=True))
            assert value(samples, "smi_jobs", status="completed") == 1
            assert not any(name.startswith("smi_payments") for (name, _labels) in samples)
        finally:
            db.session.remove()
            db.engine.dispose()


# Real processes: gunicorn's workers, and a purchase through Stripe and an RQ worker


class UnixConnection(http.client.HTTPConnection):
    """HTTP over gunicorn's unix socket."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.socket_path = path

    def connect(self) -> None:
        """Connect to the socket instead of a host."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.socket_path))


def unix_get(path: Path, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    connection = UnixConnection(path)
    try:
        connection.request("GET", url, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@contextlib.contextmanager
def _gunicorn(app: Flask, workdir: Path, **env: str) -> Iterator[Path]:
    """gunicorn (gunicorn.conf.py, 3 workers) serving the test's app on a unix socket."""
    socket_path = workdir / "gunicorn.sock"
    environment = config_as_environment(dict(app.config))
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment.update(
        GUNICORN_BIND=f"unix:{socket_path}", WEB_CONCURRENCY="3", GUNICORN_THREADS="2", **env
    )
    log = workdir / "gunicorn.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"gunicorn exited: {log.read_text()[-3000:]}")
            try:
                return unix_get(socket_path, "/healthz")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=30)
        yield socket_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)


def _healthz_at_once(socket_path: Path, count: int) -> None:
    """`count` GET /healthz, 12 at a time, each on a fresh connection."""

    def one(_: int) -> int:
        return unix_get(socket_path, "/healthz")[0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert set(pool.map(one, range(count))) == {200}


@pytest.mark.slow
def test_one_scrape_sums_the_requests_of_every_gunicorn_worker(app: Flask, tmp_path: Path) -> None:
    figures = tmp_path / "prometheus"
    figures.mkdir()
    (figures / "counter_1.db").write_bytes(b"left by an earlier run")
    with _gunicorn(app, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(figures)) as socket_path:
        assert not (figures / "counter_1.db").exists()
        before = parse(unix_get(socket_path, "/metrics", {"Authorization": f"Bearer {TOKEN}"})[1])
        # Bursts until several processes have answered: on a busy machine one may take a burst.
        sent, writers = 0, set[str]()
        while len(writers) < 2 and sent < 900:
            _healthz_at_once(socket_path, 90)
            sent += 90
            writers = {p.name.split("_")[-1] for p in figures.glob("counter_*.db")}
        assert len(writers) >= 2, writers  # the requests were answered by several processes

        healthz = {"endpoint": "health.healthz", "status": "200"}
        seen = []
        for _ in range(6):  # whichever worker answers a scrape, it shows every worker's count
            status, text = unix_get(socket_path, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
            assert status == 200
            samples = parse(text)
            seen.append(
                (value(samples, "smi_http_requests_total", **healthz) or 0)
                - (value(before, "smi_http_requests_total", **healthz) or 0)
            )
            assert value(samples, "smi_http_request_seconds_count", **healthz) == value(
                samples, "smi_http_requests_total", **healthz
            )
        assert seen == [sent] * 6
        assert unix_get(socket_path, "/metrics")[0] == 404
        assert unix_get(socket_path, "/metrics", {"Authorization": "Bearer wrong"})[0] == 404


@pytest.mark.slow
def test_without_a_folder_gunicorn_makes_a_private_one_and_removes_it(
    app: Flask, tmp_path: Path
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with _gunicorn(app, tmp_path, TMPDIR=str(temporary)) as socket_path:
        _healthz_at_once(socket_path, 30)
        (made,) = temporary.glob("smi-metrics-*")
        assert made.stat().st_mode & 0o777 == 0o700
        status, text = unix_get(socket_path, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        healthz = {"endpoint": "health.healthz", "status": "200"}
        assert (value(parse(text), "smi_http_requests_total", **healthz) or 0) >= 30
    assert not list(temporary.glob("smi-metrics-*"))


@pytest.mark.slow
def test_a_purchase_shows_in_one_scrape_with_the_workers_figures(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    app = live_app.app
    start_worker()
    attachment = make_attachment(app, width=120, height=90, title="Harbour")
    db.session.commit()
    client = app.test_client()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": "buyer@example.com"}
    assert client.post("/checkout", data=data).status_code == 303
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).one()
    stripe_local.pay(str(job.stripe_checkout_session_id))
    smtp_sink.wait_for(2, timeout=30)  # "payment received" and "ready"
    wait_until(lambda: rq_jobs_ended(app.config["REDIS_URL"], job.job_id), timeout=30)
    link = next(
        word
        for message in smtp_sink.messages
        for word in text_of(message).split()
        if "/download/" in word
    )
    file = requests.get(f"{link}/file", timeout=30)
    assert file.status_code == 200
    wait_until(lambda: "smi_downloads_total 1.0" in scrape(client))

    text = scrape(client)
    samples = parse(text)
    print(text)  # the sample scrape for the README
    assert value(samples, "smi_checkouts_started_total", resolution="4x") == 1
    assert value(samples, "smi_payments_total", resolution="4x") == 1
    paid = {"type": "checkout.session.completed", "outcome": "processed"}
    assert value(samples, "smi_webhook_events_total", **paid) == 1
    upscaled = {"engine": "local", "resolution": "4x"}
    assert value(samples, "smi_upscale_seconds_count", **upscaled) == 1
    assert (value(samples, "smi_upscale_seconds_sum", **upscaled) or 0) > 0
    assert value(samples, "smi_emails_total", kind="paid", outcome="sent") == 1
    assert value(samples, "smi_emails_total", kind="ready", outcome="sent") == 1
    assert value(samples, "smi_jobs", status="completed") == 1
    assert value(samples, "smi_jobs", status="awaiting_payment") == 0
    assert value(samples, "smi_downloads_total") == 1
    assert value(samples, "smi_download_bytes_total") == len(file.content)
    assert value(samples, "smi_provider_credits_total") == 0  # the local engine uses none
    assert value(samples, "smi_queue_depth", queue="upscale") == 0
    assert link.rsplit("/", 1)[-1] not in text
