"""REDIS_URL with a password, and over TLS (`rediss://`): the app's queues, the rate limits
(Flask-Limiter's storage), /readyz and a real worker, against real redis-servers started with
`--requirepass` (on a unix socket) and with TLS on a loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from redis import Redis
from rq.job import Job as RQJob

from storefront import create_app
from storefront.extensions import db
from storefront.queues import DEFAULT_QUEUE, get_queue
from tests.conftest import config_as_environment, wait_for_redis

ROOT = Path(__file__).resolve().parent.parent
# Characters that must be percent-encoded in a URL's password.
PASSWORD = "s3cret/with:odd@chars"


def start_redis(workdir: Path, *arguments: str) -> subprocess.Popen[bytes]:
    """A redis-server without persistence, with the extra `arguments`."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    return subprocess.Popen(
        [binary, "--save", "", "--appendonly", "no", "--dir", str(workdir), *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a redis-server this test started."""
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server on a unix socket that wants a password; its URL, password included."""
    socket_path = tmp_path / "redis.sock"
    process = start_redis(
        tmp_path, "--port", "0", "--unixsocket", str(socket_path), "--requirepass", PASSWORD
    )
    url = f"unix://:{quote(PASSWORD, safe='')}@{socket_path}?db=0"
    try:
        wait_for_redis(url, process)
        yield url
    finally:
        stop(process)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed (apt-get install openssl)")
    cert, key = folder / "redis.crt", folder / "redis.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def free_port() -> int:
    """A loopback TCP port free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server that speaks only TLS, with a password; its `rediss://` URL, which trusts
    the server's certificate through `ssl_ca_certs`. Another port if the first one was taken."""
    cert, key = self_signed_certificate(tmp_path)
    for attempt in range(3):
        port = free_port()
        process = start_redis(
            tmp_path,
            *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
            *("--requirepass", PASSWORD),
        )
        url = f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        try:
            wait_for_redis(url, process)
        except RuntimeError:
            if process.poll() is None:
                stop(process)
            if attempt == 2:
                raise
            continue
        try:
            yield url
        finally:
            stop(process)
        return


@pytest.fixture(params=["password", "tls"])
def secured_redis(request: pytest.FixtureRequest) -> str:
    """The URL of a redis-server with a password, then of one with TLS and a password."""
    fixture = "password_redis" if request.param == "password" else "tls_redis"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def secured_app(app_config: dict[str, Any], secured_redis: str) -> Iterator[Flask]:
    """The app on the secured Redis, one Buy a minute allowed."""
    app_config.update(REDIS_URL=secured_redis, CHECKOUT_RATE_LIMIT="1/minute")
    application = create_app(app_config)
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()  # no connection left for the garbage collector (PostgreSQL warns)


@pytest.mark.slow
def test_app_limits_and_worker_use_a_secured_redis(
    secured_app: Flask, secured_redis: str, tmp_path: Path
) -> None:
    client = secured_app.test_client()
    ready = client.get("/readyz")
    assert ready.get_json()["checks"]["redis"] == "ok"

    # Flask-Limiter counts in that Redis (not in its in-memory fallback): the second Buy is
    # refused, and the count is there.
    assert client.post("/checkout", data={"attachment_id": "999999"}).status_code != 429
    assert client.post("/checkout", data={"attachment_id": "999999"}).status_code == 429
    redis = Redis.from_url(secured_redis)
    try:
        assert redis.keys("smi:limits*")

        # The app's queue, and a real worker (with its scheduler) that runs the job and quits.
        job = get_queue(secured_app, DEFAULT_QUEUE).enqueue("operator.add", 2, 3)
        worker = subprocess.run(
            [sys.executable, "-m", "worker", "--burst"],
            cwd=ROOT,
            env=config_as_environment(dict(secured_app.config)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert worker.returncode == 0, worker.stdout + worker.stderr
        assert RQJob.fetch(job.id, connection=redis).return_value() == 5
        # The password never reaches the worker's log.
        assert PASSWORD not in worker.stdout + worker.stderr
    finally:
        redis.close()


def test_a_wrong_password_makes_the_app_unready(
    app_config: dict[str, Any], password_redis: str
) -> None:
    app_config["REDIS_URL"] = password_redis.replace(quote(PASSWORD, safe=""), "wrong")
    app = create_app(app_config)
    with app.app_context():
        ready = app.test_client().get("/readyz")
        db.session.remove()
        db.engine.dispose()
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["redis"].startswith("down:")
