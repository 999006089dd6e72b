"""The deployment: gunicorn with gunicorn.conf.py behind Debian's nginx with deploy/'s site file.

The site file is used as shipped, with only what a test machine must swap: the listen ports
(loopback, no TLS), the paths (this test's storage, static/ and logs) and gunicorn's address (a
unix socket). nginx runs as the current user with its own prefix, pid and logs.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import pwd
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from storefront.extensions import db
from storefront.jobs.delivery import token_digest
from storefront.models import DownloadLog, Job
from tests.admin_helpers import completed_job, fresh
from tests.conftest import config_as_environment, wait_until

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "nginx" / "sell-my-images.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ACCEL_PREFIX = "/protected"
TOKEN = "fedcba9876543210" * 4
SIZE = 3_000_000
CONTENT = bytes((i * 7 + i // 251) % 256 for i in range(SIZE))
CLIENT_ADDRESS = "127.0.0.2"  # Linux routes all of 127/8 to lo: a client that is not nginx


def _swap(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced; the site file must still say `old`, or the test says so."""
    assert old in text, f"{SITE.name} no longer contains {old!r}: update tests/test_deploy.py"
    return text.replace(old, new)


def site_for_test(storage: Path, socket_path: Path, port: int, http_port: int, logs: Path) -> str:
    """deploy/'s site file, listening on loopback ports without TLS, with this test's paths."""
    site = SITE.read_text()
    site = _swap(site, "server 127.0.0.1:8000;", f"server unix:{socket_path};")
    site = _swap(site, "listen [::]:80;\n", "")
    site = _swap(site, "listen [::]:443 ssl http2;\n", "")
    site = _swap(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    site = _swap(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{port};")
    site = "\n".join(line for line in site.splitlines() if not line.strip().startswith("ssl_"))
    site = _swap(site, "alias /srv/smi/instance/storage/;", f"alias {storage}/;")
    site = _swap(site, "alias /srv/smi/app/static/;", f"alias {ROOT / 'static'}/;")
    site = _swap(site, "/var/log/nginx/sell-my-images.access.log", str(logs / "access.log"))
    site = _swap(site, "/var/log/nginx/sell-my-images.error.log", str(logs / "error.log"))
    return _swap(site, "location /protected/ {", f"location {ACCEL_PREFIX}/ {{")


def nginx_conf(workdir: Path, site: str) -> str:
    """A main configuration around the site: foreground, its own pid, logs and temp files."""
    user = ""
    if os.geteuid() == 0:  # as root, nginx would run its workers as nobody, who cannot read tmp
        user = f"user {pwd.getpwuid(0).pw_name};"
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {workdir / "default-access.log"};
{temp}
{site}
}}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@dataclass
class Site:
    """nginx in front of gunicorn: where to connect, and the log files of both."""

    app: Flask
    port: int
    http_port: int
    nginx_log: Path
    gunicorn_log: Path

    def request(
        self, path: str, headers: dict[str, str] | None = None, port: int | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """GET `path` through nginx from CLIENT_ADDRESS: status, headers and body."""
        connection = http.client.HTTPConnection(
            "127.0.0.1", port or self.port, timeout=30, source_address=(CLIENT_ADDRESS, 0)
        )
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


def _start_gunicorn(app: Flask, workdir: Path, socket_path: Path) -> subprocess.Popen[bytes]:
    env = config_as_environment(dict(app.config))
    env.update(GUNICORN_BIND=f"unix:{socket_path}", WEB_CONCURRENCY="2", GUNICORN_THREADS="2")
    with (workdir / "gunicorn.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _start_nginx(workdir: Path, socket_path: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """nginx on two free loopback ports (chosen again if another process took one first)."""
    for _ in range(5):
        port, http_port = _free_port(), _free_port()
        site = site_for_test(Path(str(workdir / "storage")), socket_path, port, http_port, workdir)
        (workdir / "nginx.conf").write_text(nginx_conf(workdir, site))
        process = subprocess.Popen(
            [NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", "error.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process, port, http_port
            except OSError:
                time.sleep(0.05)
        _stop(process)
        if "Address already in use" not in (workdir / "error.log").read_text():
            break
    raise AssertionError(f"nginx did not start: {(workdir / 'error.log').read_text()[-2000:]}")


@pytest.fixture
def site(app: Flask, tmp_path: Path) -> Iterator[Site]:
    """gunicorn (gunicorn.conf.py, 2 workers) serving this test's app behind nginx."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed (apt-get install nginx)")
    app.config.update(TRUSTED_PROXY_HOPS=1, DOWNLOAD_ACCEL_PREFIX=ACCEL_PREFIX)
    workdir = tmp_path / "deploy"
    workdir.mkdir()
    assert Path(app.config["STORAGE_DIR"]) == tmp_path / "storage"
    (workdir / "storage").symlink_to(tmp_path / "storage")
    socket_path = workdir / "gunicorn.sock"
    gunicorn = _start_gunicorn(app, workdir, socket_path)
    nginx: subprocess.Popen[bytes] | None = None
    try:
        nginx, port, http_port = _start_nginx(workdir, socket_path)
        served = Site(app, port, http_port, workdir / "access.log", workdir / "gunicorn.log")
        wait_until(lambda: _ready(served, gunicorn), timeout=30)
        yield served
    finally:
        if nginx is not None:
            _stop(nginx)
        _stop(gunicorn)


def _ready(site: Site, gunicorn: subprocess.Popen[bytes]) -> bool:
    if gunicorn.poll() is not None:
        raise AssertionError(f"gunicorn exited: {site.gunicorn_log.read_text()[-3000:]}")
    return site.request("/healthz")[0] == 200


def _logged(job_id: str) -> list[DownloadLog]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(DownloadLog).where(DownloadLog.job_id == job_id).order_by(DownloadLog.id)
        )
    )


def _job(app: Flask) -> Job:
    return completed_job(app, content=CONTENT, download_token=token_digest(TOKEN))


def _stripe_session_id() -> str:
    return "cs_test_" + "Zq9" * 20


@pytest.mark.slow
def test_downloads_through_nginx_are_counted_by_the_bytes_it_sends(site: Site) -> None:
    """The file goes out through X-Accel; a download resumed with Range counts once."""
    job = _job(site.app)
    url = f"/download/{TOKEN}/file"
    # An address the client makes up stays to the left of the one nginx appends.
    status, headers, body = site.request(url, {"X-Forwarded-For": "203.0.113.9"})
    assert (status, body, headers["Content-Disposition"]) == (
        200,
        CONTENT,
        f'attachment; filename="{Path(job.upscaled_file_path or "").name}"',
    )
    assert fresh(job.job_id).download_count == 1
    # A second download, broken off by the client after `cut` bytes and resumed there.
    cut = SIZE // 3
    status, headers, body = site.request(url, {"Range": f"bytes=0-{cut - 1}"})
    assert (status, body) == (206, CONTENT[:cut])
    status, headers, body = site.request(url, {"Range": f"bytes={cut}-"})
    assert (status, headers["Content-Range"], body) == (
        206,
        f"bytes {cut}-{SIZE - 1}/{SIZE}",
        CONTENT[cut:],
    )
    assert fresh(job.job_id).download_count == 2  # the pair is one download
    # The log has the bytes nginx sent, and the client's address, not nginx's.
    rows = [(row.ip, row.bytes_sent, row.counted) for row in _logged(job.job_id)]
    assert rows == [
        (CLIENT_ADDRESS, SIZE, True),
        (CLIENT_ADDRESS, cut, True),
        (CLIENT_ADDRESS, SIZE - cut, False),
    ]


@pytest.mark.slow
def test_a_download_cut_off_behind_nginx_and_resumed_counts_once(site: Site) -> None:
    """The app never sees the cut; the resume says what the buyer holds, and the rest is given
    back once. A resume of that resume is not free again."""
    job = _job(site.app)
    url = f"/download/{TOKEN}/file"
    connection = http.client.HTTPConnection(
        "127.0.0.1", site.port, timeout=30, source_address=(CLIENT_ADDRESS, 0)
    )
    connection.request("GET", url)
    response = connection.getresponse()
    cut = SIZE // 4
    received = response.read(cut)
    connection.close()  # the network breaks off
    assert (response.status, received) == (200, CONTENT[:cut])
    assert fresh(job.job_id).download_count == 1
    status, headers, body = site.request(url, {"Range": f"bytes={cut}-"})
    assert (status, body) == (206, CONTENT[cut:])
    assert fresh(job.job_id).download_count == 1  # one download, in two responses
    rows = [(row.bytes_sent, row.range_header, row.counted) for row in _logged(job.job_id)]
    assert rows == [(cut, f"bytes=0-{cut - 1}", True), (SIZE - cut, f"bytes={cut}-", False)]
    # Resuming the resume again from further on is charged: breaking off on purpose gains little.
    status, _, body = site.request(url, {"Range": f"bytes={cut * 2}-"})
    assert (status, body) == (206, CONTENT[cut * 2 :])
    assert fresh(job.job_id).download_count == 2


@pytest.mark.slow
def test_access_logs_keep_no_secret_and_nginx_serves_the_rest(site: Site) -> None:
    """No token or session id in nginx's or gunicorn's log; static files and the redirect."""
    session_id = _stripe_session_id()
    job = _job(site.app)
    job.stripe_checkout_session_id = session_id
    db.session.commit()
    referer = f"http://shop.example.com/download/{TOKEN}"
    assert site.request(f"/download/{TOKEN}", {"Referer": referer})[0] == 200
    assert site.request(f"/download/{TOKEN}/file")[0] == 200
    status, headers, _ = site.request(f"/orders/{job.job_id}?session_id={session_id}")
    assert (status, headers["Location"]) == (303, f"/orders/{job.job_id}")
    assert site.request(f"/admin/jobs?q={session_id}")[0] == 302  # to the sign-in page
    # nginx serves static files itself, and sends plain http to https.
    status, _, body = site.request("/static/site.css")
    assert (status, body) == (200, (ROOT / "static" / "site.css").read_bytes())
    status, headers, _ = site.request("/images/1?x=1", port=site.http_port)
    assert (status, headers["Location"]) == (301, "https://127.0.0.1/images/1?x=1")

    def logs() -> tuple[str, str]:
        return site.nginx_log.read_text(), site.gunicorn_log.read_text()

    # Each gunicorn worker writes its own lines: wait for every request's, in whatever order.
    requested = ("/download/", f"/orders/{job.job_id}", "/admin/jobs")
    nginx, gunicorn = wait_until(
        lambda: all(path in log for log in logs() for path in requested) and logs()
    )
    for log in (nginx, gunicorn):
        assert TOKEN not in log and session_id not in log
        assert '"GET /download/[token]/file HTTP/1.' in log
        assert f"/orders/{job.job_id}?session_id=[session] HTTP/1." in log
        assert "/admin/jobs?q=cs_[session] HTTP/1." in log
        assert '"http://shop.example.com/download/[token]"' in log
    assert "/static/site.css" not in gunicorn  # nginx served it (and does not log it)


def test_without_trusted_proxies_a_forged_forwarded_for_is_ignored(
    app: Flask, client: FlaskClient
) -> None:
    job = _job(app)
    forged = {"X-Forwarded-For": "203.0.113.9"}
    environ = {"REMOTE_ADDR": CLIENT_ADDRESS}
    response = client.get(
        f"/download/{TOKEN}/file", headers=forged, environ_base=environ, buffered=True
    )
    assert response.status_code == 200
    assert [row.ip for row in _logged(job.job_id)] == [CLIENT_ADDRESS]


@pytest.fixture
def one_proxy(app_config: dict[str, Any]) -> None:
    """The test app behind one trusted proxy (set before `app` is built)."""
    app_config["TRUSTED_PROXY_HOPS"] = 1


def test_behind_one_trusted_proxy_its_forwarded_for_is_the_client(
    one_proxy: None, app: Flask, client: FlaskClient
) -> None:
    job = _job(app)
    forwarded = {"X-Forwarded-For": "203.0.113.66, 198.51.100.7"}
    response = client.get(
        f"/download/{TOKEN}/file",
        headers=forwarded,
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
        buffered=True,
    )
    assert response.status_code == 200
    assert [row.ip for row in _logged(job.job_id)] == ["198.51.100.7"]  # the last hop's


# gunicorn's access log


def _gunicorn_settings() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def _access_line(logger_class: type[Any], tmp_path: Path, log_format: str) -> str:
    """One access line written by a gunicorn logger of `logger_class`, as gunicorn writes it."""
    from gunicorn.config import Config

    config = Config()
    config.set("accesslog", str(tmp_path / "access.log"))
    config.set("access_log_format", log_format)
    logger = logger_class(config)
    query = f"session_id={_stripe_session_id()}"
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/download/{TOKEN}/file?{query}",
        "PATH_INFO": f"/download/{TOKEN}/file",
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.2",
        "HTTP_REFERER": f"https://shop.example.com/originals/signed.{TOKEN}",
        "HTTP_STRIPE_SIGNATURE": f"t=1,v1={TOKEN}",
    }
    request = SimpleNamespace(headers=[("STRIPE-SIGNATURE", f"t=1,v1={TOKEN}"), ("COOKIE", TOKEN)])
    response = SimpleNamespace(status="200 OK", sent=12, headers=[("Set-Cookie", TOKEN)])
    logger.access(response, request, environ, dt.timedelta(milliseconds=5))
    for handler in list(logger.access_log.handlers):
        logger.access_log.removeHandler(handler)
        handler.close()
    return (tmp_path / "access.log").read_text()


def test_the_gunicorn_logger_redacts_every_part_of_an_access_line(tmp_path: Path) -> None:
    settings = _gunicorn_settings()
    every_atom = settings["access_log_format"] + (
        " %(U)s %(q)s %({stripe-signature}i)s %({cookie}i)s %({set-cookie}o)s"
        " %({http_stripe_signature}e)s %({raw_uri}e)s"
    )
    line = _access_line(settings["logger_class"], tmp_path, every_atom)
    assert TOKEN not in line and _stripe_session_id() not in line
    assert line.startswith("127.0.0.2 - - [")
    assert '"GET /download/[token]/file?session_id=[session] HTTP/1.1" 200 12' in line
    assert '"https://shop.example.com/originals/[token]"' in line
    assert " /download/[token]/file session_id=[session] " in line
    assert line.count("[redacted]") == 4  # Stripe-Signature twice, Cookie, Set-Cookie


def test_gunicorn_without_its_settings_file_still_redacts_once_the_app_is_built(
    app: Flask, tmp_path: Path
) -> None:
    from gunicorn.glogging import Logger

    line = _access_line(Logger, tmp_path, _gunicorn_settings()["access_log_format"])
    assert TOKEN not in line and "/download/[token]/file?session_id=[session]" in line


def test_gunicorn_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("GUNICORN_THREADS", "7")
    monkeypatch.setenv("GUNICORN_BIND", "unix:/run/smi/web.sock, 127.0.0.1:8001")
    settings = _gunicorn_settings()
    assert (settings["workers"], settings["threads"]) == (3, 7)
    assert settings["bind"] == ["unix:/run/smi/web.sock", "127.0.0.1:8001"]
    monkeypatch.delenv("WEB_CONCURRENCY")
    monkeypatch.delenv("GUNICORN_THREADS")
    monkeypatch.delenv("GUNICORN_BIND")
    cores = len(os.sched_getaffinity(0))
    settings = _gunicorn_settings()
    assert (settings["workers"], settings["threads"]) == (min(2 * cores + 1, 9), min(2 * cores, 5))
    assert settings["bind"] == ["127.0.0.1:8000"]
    assert settings["forwarded_allow_ips"] == "" and settings["secure_scheme_headers"] == {}
