"""Shared fixtures: app, client, runner, a clean database per test, real Redis, an SMTP sink."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import Job, JobStatus
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from werkzeug.serving import make_server

from devservers.common import ServerThread
from devservers.sentry_local import LocalSentry
from devservers.sentry_local import start_server as start_sentry
from devservers.smtp_sink import SinkHandler, start_sink
from devservers.stripe_local import LocalStripe
from devservers.stripe_local import start_server as start_stripe
from devservers.upsampler_local import LocalUpsampler
from devservers.upsampler_local import start_server as start_upsampler
from storefront import create_app
from storefront.config import database_uri
from storefront.extensions import db

if TYPE_CHECKING:
    from devservers.seaweed import LocalS3

# Set SMI_TEST_DATABASE_URL to run the suite against PostgreSQL instead of SQLite files.
POSTGRES_SERVER_URL = os.environ.get("SMI_TEST_DATABASE_URL", "")
RQ_ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


def _database_of_this_process(url: str) -> str:
    """The PostgreSQL database this test process uses: the one given, or under pytest-xdist one
    of its own next to it (smi_test_gw0 …), since processes sharing one would empty each other's
    tables. `migrated_database` creates it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    given = make_url(url)
    return given.set(database=f"{given.database}_{worker}").render_as_string(hide_password=False)


POSTGRES_URL = _database_of_this_process(POSTGRES_SERVER_URL)


def wait_for_redis(url: str, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Wait until the redis-server `process` answers PING at `url`."""
    deadline = time.monotonic() + timeout
    client = Redis.from_url(url, socket_connect_timeout=0.2)
    try:
        while True:
            try:
                client.ping()
                return
            except RedisConnectionError:
                if process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {process.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server does not answer after {timeout}s") from None
                time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a unix socket, without persistence; yields its URL.

    A socket file, not a TCP port: redis-server cannot bind port 0 and say which port it got.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
    socket_path = workdir / "redis.sock"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{socket_path}?db=0"
    try:
        wait_for_redis(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The test Redis, emptied before each test."""
    client = Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database built once by the migrations: a template SQLite file, or PostgreSQL."""
    if POSTGRES_URL:
        url = POSTGRES_URL
        if url != POSTGRES_SERVER_URL:
            _create_database(url)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'template.db'}"
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": url,
            "STORAGE_DIR": str(tmp_path_factory.mktemp("storage")),
        }
    )
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        db.engine.dispose()
    return url


def _create_database(url: str) -> None:
    """Create the PostgreSQL database of `url` afresh, from the server's given database."""
    name = make_url(url).database
    server = create_engine(
        database_uri(POSTGRES_SERVER_URL), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    with server.connect() as connection:
        connection.execute(db.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(db.text(f'CREATE DATABASE "{name}"'))
    server.dispose()


def _fresh_database_url(template_url: str, tmp_path: Path) -> str:
    """A database for one test: a copy of the template SQLite file, or PostgreSQL emptied."""
    if template_url.startswith("sqlite:///"):
        target = tmp_path / "smi.db"
        shutil.copyfile(template_url.removeprefix("sqlite:///"), target)
        return f"sqlite:///{target}"
    # Emptied here, not by `app`: every app a test builds from `app_config` starts clean.
    engine = create_engine(database_uri(template_url), poolclass=NullPool)
    with engine.connect() as connection:
        # A connection an earlier test left in a transaction would make TRUNCATE wait forever.
        connection.execute(db.text("SET lock_timeout = '10s'"))
        connection.execute(db.text(_truncate_statement()))
        connection.commit()
    engine.dispose()
    return template_url


def _truncate_statement() -> str:
    tables = ", ".join(table.name for table in db.metadata.sorted_tables)
    return f"TRUNCATE {tables} RESTART IDENTITY CASCADE"


def empty_tables() -> None:
    """Delete every row of every table and restart the sequences (PostgreSQL)."""
    db.session.execute(db.text(_truncate_statement()))
    db.session.commit()


@pytest.fixture
def app_config(
    migrated_database: str,
    tmp_path: Path,
    redis_url: str,
    smtp_server: tuple[int, SinkHandler],
) -> dict[str, Any]:
    """The settings a test app is built with; tests may change them before using `app`."""
    return {
        "TESTING": True,
        "SMI_ENV": "development",
        "SECRET_KEY": "test-secret-key",
        "DATABASE_URL": _fresh_database_url(migrated_database, tmp_path),
        "STORAGE_DIR": str(tmp_path / "storage"),
        "WORK_DIR": str(tmp_path / "work"),
        "REDIS_URL": redis_url,
        "PUBLIC_BASE_URL": "http://shop.test",
        "WTF_CSRF_ENABLED": False,
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": smtp_server[0],
        "MAIL_SUPPRESS_SEND": False,
        "ADMIN_EMAIL": "owner@shop.test",
        "SERVER_NAME": None,
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """An app on a clean database of its own."""
    application = create_app(app_config)
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()
    http_client = application.extensions.get("smi_stripe_http")
    if http_client is not None:
        http_client.close()


@pytest.fixture(autouse=True)
def _close_pooled_connections() -> Iterator[None]:
    """After each test, close the pooled database connections of every app it built (a second
    app with other settings, say), rather than leave them to the garbage collector: on PostgreSQL
    an open connection collected in a later test is a ResourceWarning there, and an error."""
    yield
    # Flask-SQLAlchemy keeps each app's engines here while the app lives; it has no public list.
    for engines in list(db._app_engines.values()):
        for engine in engines.values():
            engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A runner for the app's CLI commands."""
    return app.test_cli_runner()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[tuple[int, SinkHandler]]:
    """A real SMTP server on loopback for the whole run; yields (port, handler)."""
    controller, handler = start_sink()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


@pytest.fixture
def smtp_sink(smtp_server: tuple[int, SinkHandler]) -> SinkHandler:
    """The SMTP sink every test app sends to, emptied for this test."""
    smtp_server[1].clear()
    return smtp_server[1]


@pytest.fixture
def stripe_local(app: Flask) -> Iterator[LocalStripe]:
    """The local Stripe-compatible server, with the app's settings pointed at it.

    Webhooks go nowhere until `live_app` (or the test) sets their URL.
    """
    with start_stripe(webhook_secret="whsec_test_secret", retry_scale=0.02) as local:
        app.config.update(
            STRIPE_API_BASE=local.url,
            STRIPE_SECRET_KEY="sk_test_local",
            STRIPE_WEBHOOK_SECRET="whsec_test_secret",
        )
        yield local


@pytest.fixture
def sentry_local() -> Iterator[LocalSentry]:
    """A local Sentry envelope server; `sentry_local.dsn` sends to it (`SENTRY_DSN`).

    Sentry started in this process by an app built with that DSN is stopped afterwards.
    """
    from storefront import error_tracking

    with start_sentry() as local:
        try:
            yield local
        finally:
            error_tracking.shutdown()


@dataclass
class LiveApp:
    """The app served over HTTP on a loopback port, as Stripe's webhooks and browsers reach it."""

    app: Flask
    url: str


@pytest.fixture
def live_app(app: Flask, stripe_local: LocalStripe) -> Iterator[LiveApp]:
    """Serve `app` from a thread on a port the kernel picks; Stripe's webhooks go to it."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{server.port}"
    app.config["PUBLIC_BASE_URL"] = url
    serving = ServerThread(server, name="live-app")
    serving.start()
    stripe_local.set_webhook(f"{url}/webhooks/stripe", "whsec_test_secret")
    try:
        yield LiveApp(app, url)
    finally:
        stripe_local.set_webhook(None, None)
        serving.stop()


def read_listening_url(process: subprocess.Popen[Any], timeout: float = 10.0) -> tuple[str, bytes]:
    """Read a server process's output until it logs `listening on <url>`; return the URL and
    the output read so far (the rest is left for `communicate()`)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    output = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (found := re.search(rb"listening on (http://[^\s;,]+)[^\n]*\n", output)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"no 'listening on' line within {timeout}s: {output!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the server exited before listening: {output!r}")
            output += chunk
    return found.group(1).decode(), output


def rq_jobs_ended(redis_url: str, shop_job_id: str) -> bool:
    """Whether every RQ job about a shop job (named in its RQ id or arguments) has ended.

    Jobs are found by their Redis records, not through queues and registries: a worker pops a
    job from its queue before it registers it as started, and in between only the job's own
    record ("queued") shows that it is still to run.
    """
    prefix = Job.redis_job_namespace_prefix
    connection = Redis.from_url(redis_url)
    try:
        ids = [key.decode().removeprefix(prefix) for key in connection.scan_iter(f"{prefix}*")]
        jobs = Job.fetch_many([i for i in ids if ":" not in i], connection=connection)
        about = [j for j in jobs if j and (shop_job_id in j.id or shop_job_id in j.args)]
        return all(job.get_status() in RQ_ENDED for job in about)
    finally:
        connection.close()


UPSAMPLER_TEST_KEY = "up_test_secret_key"


@pytest.fixture
def upsampler(live_app: LiveApp) -> Iterator[LocalUpsampler]:
    """The local Upsampler server, with the app set to upscale through it."""
    with start_upsampler(api_key=UPSAMPLER_TEST_KEY, callback_retry_delay=0.1) as local:
        live_app.app.config.update(
            UPSCALER="upsampler",
            UPSAMPLER_API_KEY=UPSAMPLER_TEST_KEY,
            UPSAMPLER_API_BASE=local.api_base,
            UPSAMPLER_RESULT_HOSTS=("127.0.0.1",),
            UPSAMPLER_POLL_SECONDS=1,
        )
        yield local


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A real SeaweedFS S3 store for this test process (each xdist worker has its own).

    Started by the first test that asks for it. From then on this process's environment keeps
    boto3 (the app's, and that of processes the tests start) off ~/.aws and instance metadata.
    """
    from devservers.seaweed import LocalS3, hermetic_aws_environment

    folder = tmp_path_factory.mktemp("seaweedfs")
    local = LocalS3(folder / "data", folder / "logs")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in hermetic_aws_environment(folder).items():
            patch.setenv(name, value)
        local.start()
        try:
            yield local
        finally:
            local.stop()


@pytest.fixture
def s3_settings(s3_server: LocalS3) -> Iterator[dict[str, str]]:
    """A fresh bucket of the test S3 store, as the app's settings (`app_config.update(...)`).

    The bucket is deleted afterwards, with its contents, so its volume is free for the next.
    """
    bucket = f"smi-test-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(bucket)
    yield s3_server.settings(bucket)
    s3_server.delete_bucket(bucket)


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {predicate}")


def config_as_environment(config: dict[str, Any]) -> dict[str, str]:
    """The settings of a test app as environment variables, for processes that build their own."""
    from storefront.config import SETTINGS

    env = {k: v for k, v in os.environ.items() if k not in {s.name for s in SETTINGS}}
    for setting in SETTINGS:
        value = config.get(setting.name)
        if value is None:
            continue
        if isinstance(value, tuple | list):
            value = ",".join(str(item) for item in value)
        env[setting.name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@dataclass
class WorkerProcess:
    """A real `python -m worker` process on the test's Redis, database and mail sink."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its work horse, as a crash would."""
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


@pytest.fixture
def start_worker(app: Flask, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real RQ worker processes configured like `app`; all are stopped after the test.
    `start(*command, **settings)`: `python -m worker` unless a command is given (`rq cron …`)."""
    started: list[WorkerProcess] = []

    def start(*command: str, **overrides: Any) -> WorkerProcess:
        config = dict(app.config)
        config.update(overrides)
        env = config_as_environment(config)
        log_path = tmp_path / f"worker-{len(started)}.log"
        handle = log_path.open("wb")
        process = subprocess.Popen(
            list(command) or [sys.executable, "-m", "worker"],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        worker = WorkerProcess(process, log_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, 15)
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Debian's Chromium as root, headless, and quiet on a machine without internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def new_browser_page() -> Iterator[Callable[..., Any]]:
    """Open pages in a headless Chromium (Debian's, driven by Playwright): `open(width, height)`."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        contexts: list[Any] = []

        def open_page(width: int, height: int, **context_options: Any) -> Any:
            context = browser.new_context(
                viewport={"width": width, "height": height}, **context_options
            )
            contexts.append(context)
            page = context.new_page()
            page.set_default_timeout(20000)
            return page

        try:
            yield open_page
        finally:
            for context in contexts:
                context.close()
            browser.close()
