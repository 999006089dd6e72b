"""The Upsampler client and result fetcher, against the local Upsampler-compatible server."""

from __future__ import annotations

import email.utils
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from devservers.upsampler_local import LocalUpsampler, start_server
from worker.upsampler_client import (
    UpsamplerClient,
    UpsamplerError,
    UpsamplerJob,
    UpsamplerProtocolError,
    UpsamplerRequestError,
    UpsamplerResultRejected,
    UpsamplerTransientError,
    check_result_url,
    fetch_result,
    host_allowed,
    parse_job,
    parse_retry_after,
)

API_KEY = "ups_test_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTO_SIZE = (40, 30)
LOOPBACK = ["127.0.0.1"]
MAX_BYTES = 10_000_000


def make_png(size: tuple[int, int] = PHOTO_SIZE) -> bytes:
    """A small RGB PNG with some structure in it."""
    image = Image.new("RGB", size, (30, 120, 200))
    for x in range(size[0]):
        image.putpixel((x, x * size[1] // size[0]), (250, 240, 10))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


PHOTO = make_png()


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class TinyHttp:
    """A werkzeug server in a thread: answers with `handler`, records every request."""

    def __init__(self, handler: Callable[[Request], Response]) -> None:
        from devservers.common import ServerThread

        self.handler = handler
        self.received: list[tuple[str, str, dict[str, str], bytes]] = []
        self._cond = threading.Condition()
        self._server = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler
        )
        self.port = self._server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self._serving = ServerThread(self._server, name=f"tiny-http-{self.port}")
        self._serving.start()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        body = request.get_data()
        with self._cond:
            self.received.append((request.method, request.path, dict(request.headers), body))
            self._cond.notify_all()
        return self.handler(request)(environ, start_response)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """Wait for `count` requests and return their bodies."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.received) >= count, timeout), (
                f"expected {count} requests, got {len(self.received)}"
            )
            return [body for *_, body in self.received]

    def close(self) -> None:
        """Stop serving."""
        self._serving.stop()


def _image_host_handler(request: Request) -> Response:
    """The storefront's originals, and a few awkward answers for the result fetcher."""
    path = request.path
    if path == "/photo.png":
        return Response(PHOTO, mimetype="image/png")
    if path == "/big":
        return Response(b"x" * 4096, mimetype="image/png")  # with Content-Length
    if path == "/stream":

        def chunks() -> Iterator[bytes]:
            for _ in range(8):
                yield b"y" * 512

        return Response(chunks(), mimetype="image/png", direct_passthrough=True)
    if path == "/redirect-out":
        return Response(status=302, headers={"Location": "http://evil.test/photo.png"})
    if path == "/redirect-in":
        return Response(status=302, headers={"Location": "/photo.png"})
    if path == "/busy":
        return Response("try later", status=503, headers={"Retry-After": "4"})
    if path == "/empty":
        return Response(b"", mimetype="image/png")
    return Response("not found", status=404)


@pytest.fixture
def image_host() -> Iterator[TinyHttp]:
    """The storefront on loopback, serving the original the server fetches."""
    host = TinyHttp(_image_host_handler)
    yield host
    host.close()


@pytest.fixture
def receiver() -> Iterator[TinyHttp]:
    """A webhook endpoint that answers 200 to everything."""
    endpoint = TinyHttp(lambda request: Response("ok"))
    yield endpoint
    endpoint.close()


@pytest.fixture
def local() -> Iterator[LocalUpsampler]:
    """The local Upsampler server, requiring API_KEY, with fast callback retries."""
    with start_server(api_key=API_KEY, callback_retry_delay=0.01) as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    """The waits the client asked for (nothing really sleeps)."""
    return []


@pytest.fixture
def client(local: LocalUpsampler, sleeps: list[float]) -> Iterator[UpsamplerClient]:
    """A client of the local server whose backoff sleeps are recorded, not slept."""
    with UpsamplerClient(API_KEY, local.api_base, timeout=(2, 5), sleep=sleeps.append) as upsampler:
        yield upsampler


def submit_photo(
    client: UpsamplerClient, image_host: TinyHttp, receiver: TinyHttp | None = None, factor: int = 4
) -> UpsamplerJob:
    """Submit the host's photo for upscaling, with the receiver as webhook if given."""
    webhook = f"{receiver.url}/webhooks/upsampler/job-1/sig" if receiver else None
    return client.submit(f"{image_host.url}/photo.png", factor, "universal", webhook)


def finished(client: UpsamplerClient, local: LocalUpsampler, job: UpsamplerJob) -> UpsamplerJob:
    """Wait until the server is done with `job`; return what the status API says."""
    local.wait_for(job.id)
    assert local.wait_idle(5)
    return client.status(job.id)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test: bound, never listening.

    Held rather than picked and closed, so nobody else can start listening there meanwhile.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- round trip


def test_submit_then_status_returns_a_fetchable_upscaled_image(
    client: UpsamplerClient,
    local: LocalUpsampler,
    image_host: TinyHttp,
    tmp_path: Path,
    sleeps: list[float],
) -> None:
    job = submit_photo(client, image_host, factor=4)

    assert job.status == "IN_QUEUE"
    assert len(job.id) == 36 and job.image_url is None
    done = finished(client, local, job)
    assert done.status == "SUCCESS" and done.succeeded and done.finished
    assert done.id == job.id
    assert done.credit_cost == Decimal(1)  # ceil(160 x 120 / 1e6 x 0.25)
    assert done.error is None
    assert done.image_url == f"{local.url}/results/{job.id}.png"
    assert done.compressed_image_url == f"{local.url}/results/{job.id}-compressed.jpg"

    dest = tmp_path / "out" / "result.png"
    written = fetch_result(done.image_url, dest, allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES)

    assert written == dest.stat().st_size
    assert dest.read_bytes() == (local.result_dir / f"{job.id}.png").read_bytes()
    with Image.open(dest) as image:
        assert image.size == (160, 120) and image.format == "PNG"
    assert done.compressed_image_url is not None
    compressed = tmp_path / "small.jpg"
    fetch_result(done.compressed_image_url, compressed, allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES)
    with Image.open(compressed) as image:
        assert image.size == (160, 120) and image.format == "JPEG"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "result.png", "small.jpg"]

    (submission,) = local.submissions()
    assert submission["status"] == 200 and submission["auth"] == "ok"
    assert submission["body"] == {
        "input": {
            "imageUrl": f"{image_host.url}/photo.png",
            "inputImageType": "universal",
            "upscaleFactor": 4,
            "globalCreativity": 0,
            "detail": 0,
        }
    }
    assert [d["status"] for d in local.downloads()] == [200, 200]
    assert sleeps == []


def test_the_callback_posts_the_same_job_object_to_the_webhook(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, receiver: TinyHttp
) -> None:
    job = submit_photo(client, image_host, receiver, factor=8)

    (body,) = receiver.wait_for(1)
    method, path, headers, _ = receiver.received[0]

    assert (method, path) == ("POST", "/webhooks/upsampler/job-1/sig")
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers
    called_back = parse_job(json.loads(body))
    assert called_back == client.status(job.id)
    assert called_back.status == "SUCCESS" and called_back.credit_cost == Decimal(1)
    assert (
        local.submissions()[0]["body"]["webhook"] == f"{receiver.url}/webhooks/upsampler/job-1/sig"
    )
    assert local.wait_idle(5)
    (attempt,) = local.callbacks(job.id)
    assert attempt["ok"] and attempt["status"] == 200 and attempt["attempt"] == 1


# ----------------------------------------------------------------------------- retries


def test_429_waits_as_long_as_retry_after_says(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, sleeps: list[float]
) -> None:
    local.fail_next(429, count=2, retry_after=7)

    job = submit_photo(client, image_host)

    assert job.status == "IN_QUEUE"
    assert sleeps == [7.0, 7.0]
    assert [s["status"] for s in local.submissions()] == [429, 429, 200]
    assert len(local.jobs()) == 1


def test_retry_after_as_an_http_date_is_honoured_and_long_waits_are_capped(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, sleeps: list[float]
) -> None:
    job = submit_photo(client, image_host)
    in_30s = email.utils.formatdate(time.time() + 30, usegmt=True)
    local.fail_next(429, count=1, retry_after=in_30s, path="/status")
    local.fail_next(429, count=1, retry_after=3600, path="/status")

    client.status(job.id)

    assert len(sleeps) == 2
    assert 27 <= sleeps[0] <= 30
    assert sleeps[1] == 120.0
    assert [c["status"] for c in local.status_calls()] == [429, 429, 200]


def test_parse_retry_after_reads_seconds_dates_and_rejects_nonsense() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(email.utils.formatdate(now + 5, usegmt=True), now=now) == 5.0
    assert parse_retry_after(email.utils.formatdate(now - 5, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


def test_5xx_is_retried_with_exponential_backoff_then_succeeds(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, sleeps: list[float]
) -> None:
    job = submit_photo(client, image_host)
    local.fail_next(500, count=1, path="/status")
    local.fail_next(502, count=1, path="/status")

    status = client.status(job.id)

    assert status.id == job.id
    assert sleeps == [1.0, 2.0]
    assert [c["status"] for c in local.status_calls()] == [500, 502, 200]


def test_retries_exhausted_raise_a_transient_error(
    local: LocalUpsampler, image_host: TinyHttp, sleeps: list[float]
) -> None:
    local.fail_next(503, count=10)
    with UpsamplerClient(
        API_KEY, local.api_base, max_retries=2, backoff=0.5, sleep=sleeps.append
    ) as upsampler:
        with pytest.raises(UpsamplerTransientError) as raised:
            submit_photo(upsampler, image_host)

    assert raised.value.status_code == 503
    assert "3 attempts" in str(raised.value) and "HTTP 503" in str(raised.value)
    assert sleeps == [0.5, 1.0]
    assert [s["status"] for s in local.submissions()] == [503, 503, 503]
    assert local.jobs() == []


def test_connection_errors_are_retried_then_transient(
    sleeps: list[float], refused_port: int
) -> None:
    dead = f"http://127.0.0.1:{refused_port}/api/v1"
    with UpsamplerClient(API_KEY, dead, max_retries=3, timeout=(1, 1), sleep=sleeps.append) as c:
        with pytest.raises(UpsamplerTransientError, match="network error"):
            c.status("8c1e4b8e-0000-4000-8000-000000000000")

    assert sleeps == [1.0, 2.0, 4.0]


def test_4xx_answers_are_not_retried(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, sleeps: list[float]
) -> None:
    with UpsamplerClient("ups_wrong_key", local.api_base, sleep=sleeps.append) as wrong:
        with pytest.raises(UpsamplerRequestError) as bad_key:
            submit_photo(wrong, image_host)
    with pytest.raises(UpsamplerRequestError) as bad_request:
        client.submit(f"{image_host.url}/photo.png", 4, "watercolour", None)
    with pytest.raises(UpsamplerRequestError) as no_such_job:
        client.status("00000000-0000-4000-8000-000000000000")

    assert bad_key.value.status_code == 401 and "Invalid API key" in str(bad_key.value)
    assert bad_request.value.status_code == 400 and "inputImageType" in str(bad_request.value)
    assert no_such_job.value.status_code == 404 and "Job not found" in str(no_such_job.value)
    assert [(s["status"], s["auth"]) for s in local.submissions()] == [
        (401, "invalid"),
        (400, "ok"),
    ]
    assert [c["status"] for c in local.status_calls()] == [404]
    assert sleeps == []


def test_submit_checks_its_arguments_before_calling() -> None:
    with UpsamplerClient(API_KEY, "http://127.0.0.1:9/api/v1") as upsampler:
        with pytest.raises(ValueError):
            upsampler.submit("", 4, "universal", None)
        with pytest.raises(ValueError):
            upsampler.submit("https://shop.test/a.png", 0, "universal", None)
        with pytest.raises(ValueError):
            upsampler.status(" ")


# ----------------------------------------------------------------------------- reading answers


def test_unknown_fields_are_ignored(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp
) -> None:
    local.next_job(extra_fields={"progress": 100, "model": {"name": "precise-2"}, "tags": []})

    job = submit_photo(client, image_host)
    done = finished(client, local, job)

    assert done.status == "SUCCESS" and done.credit_cost == Decimal(1)
    assert client.status(job.id) == done
    with requests.get(
        f"{local.api_base}/status/{job.id}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    ) as raw:
        assert raw.json()["model"] == {"name": "precise-2"}


def _scripted_api(status: int, body: bytes, content_type: str = "application/json") -> TinyHttp:
    return TinyHttp(lambda request: Response(body, status=status, content_type=content_type))


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'{"status": "IN_QUEUE", "creditCost": 4}', "application/json", "no 'id'"),
        (b'{"id": "", "status": "IN_QUEUE"}', "application/json", "no 'id'"),
        (b'{"id": "j1", "status": "DONE"}', "application/json", "unknown status 'DONE'"),
        (b'{"id": "j1", "status": "SUCCESS"}', "application/json", "no 'imageUrl'"),
        (b'["j1"]', "application/json", "not a JSON object"),
        (b"<html>Gateway</html>", "text/html", "not JSON"),
    ],
)
def test_answers_the_client_cannot_read_are_protocol_errors(
    body: bytes, content_type: str, message: str, sleeps: list[float]
) -> None:
    api = _scripted_api(200, body, content_type)
    try:
        with UpsamplerClient(API_KEY, api.url, sleep=sleeps.append) as upsampler:
            with pytest.raises(UpsamplerProtocolError, match=message):
                upsampler.submit("https://shop.test/a.png", 4, "universal", None)
    finally:
        api.close()
    assert len(api.received) == 1 and sleeps == []


def test_a_status_answer_about_another_job_is_refused() -> None:
    api = _scripted_api(
        200, b'{"id": "someone-else", "status": "SUCCESS", "imageUrl": "https://x"}'
    )
    try:
        with UpsamplerClient(API_KEY, api.url) as upsampler:
            with pytest.raises(UpsamplerProtocolError, match="another job"):
                upsampler.status("mine")
    finally:
        api.close()


def test_parse_job_reads_success_and_failure_tolerantly() -> None:
    success = parse_job(
        {
            "id": "a1",
            "status": "SUCCESS",
            "imageUrl": "https://cdn.upsampler.com/a1.png",
            "compressedImageUrl": "https://cdn.upsampler.com/a1.jpg",
            "creditCost": 2.5,
            "somethingNew": {"x": 1},
        }
    )
    failure = parse_job(
        {"id": "b2", "status": "FAILED", "error": {"message": "Insufficient credits"}}
    )
    bare_failure = parse_job({"id": "c3", "status": "FAILED"})
    queued = parse_job({"id": "d4"}, default_status="IN_QUEUE")

    assert success.credit_cost == Decimal("2.5") and success.error is None
    assert success.compressed_image_url == "https://cdn.upsampler.com/a1.jpg"
    assert failure.failed and failure.error == "Insufficient credits"
    assert failure.image_url is None and failure.credit_cost is None
    assert bare_failure.error and "without a message" in bare_failure.error
    assert queued.status == "IN_QUEUE" and not queued.finished
    with pytest.raises(UpsamplerProtocolError, match="creditCost"):
        parse_job({"id": "e5", "status": "IN_PROGRESS", "creditCost": -1})
    with pytest.raises(UpsamplerProtocolError, match="creditCost"):
        parse_job({"id": "e5", "status": "IN_PROGRESS", "creditCost": "lots"})
    with pytest.raises(UpsamplerProtocolError, match="no 'status'"):
        parse_job({"id": "e5"})


# ----------------------------------------------------------------------------- fetch_result


def test_a_host_not_on_the_list_is_refused_without_a_request(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, tmp_path: Path
) -> None:
    done = finished(client, local, submit_photo(client, image_host))
    assert done.image_url is not None

    with pytest.raises(UpsamplerResultRejected, match="not on the allow-list"):
        fetch_result(
            done.image_url, tmp_path / "r.png", allowed_hosts=["upsampler.com"], max_bytes=MAX_BYTES
        )
    with pytest.raises(UpsamplerResultRejected, match="not on the allow-list"):
        fetch_result(
            done.image_url, tmp_path / "r.png", allowed_hosts=["localhost"], max_bytes=MAX_BYTES
        )

    assert local.downloads() == []
    assert list(tmp_path.iterdir()) == []


def test_result_urls_on_another_host_name_need_that_name_listed(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, tmp_path: Path
) -> None:
    local.next_job(result_host="localhost")
    done = finished(client, local, submit_photo(client, image_host))

    assert done.image_url == f"http://localhost:{local.port}/results/{done.id}.png"
    with pytest.raises(UpsamplerResultRejected):
        fetch_result(
            done.image_url, tmp_path / "r.png", allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES
        )
    written = fetch_result(
        done.image_url, tmp_path / "r.png", allowed_hosts=["LocalHost"], max_bytes=MAX_BYTES
    )
    assert written > 0
    assert [d["host"] for d in local.downloads()] == [f"localhost:{local.port}"]


@pytest.mark.parametrize(
    "url",
    [
        "http://upsampler.com/r.png",  # plain http off loopback
        "ftp://upsampler.com/r.png",
        "file:///etc/passwd",
        "https://user:pw@upsampler.com/r.png",
        "https://upsampler.com@evil.test/r.png",  # userinfo trick: the host is evil.test
        "https://evil.test\\@upsampler.com/r.png",
        "https://evilupsampler.com/r.png",
        "https://upsampler.com.evil.test/r.png",
        "https://10.0.0.7/r.png",  # IP literal not listed
        "https:///r.png",
        "https://upsampler.com:99999/r.png",
        "https://upsampler.com/r.png\n",
    ],
)
def test_check_result_url_refuses(url: str) -> None:
    with pytest.raises(UpsamplerResultRejected):
        check_result_url(url, ["upsampler.com"])


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://upsampler.com/r.png", ["upsampler.com"]),
        ("https://cdn.upsampler.com/r.png", ["upsampler.com"]),  # subdomains of a listed name
        ("https://UPSAMPLER.com./r.png", ["Upsampler.COM"]),
        ("http://localhost:8080/r.png", ["localhost"]),  # http allowed on loopback only
        ("http://127.0.0.1:8080/r.png", ["127.0.0.1"]),
        ("http://[::1]:8080/r.png", ["::1"]),
        # A listed IP literal must be public: a listed 10.0.0.7 is refused (see
        # tests/test_upsampler_hardening.py).
        ("https://93.184.215.14/r.png", ["93.184.215.14"]),
    ],
)
def test_check_result_url_accepts(url: str, allowed: list[str]) -> None:
    assert check_result_url(url, allowed) == url


def test_ip_entries_match_exactly_never_as_a_suffix() -> None:
    assert host_allowed("127.0.0.1", ["127.0.0.1"])
    assert not host_allowed("x.127.0.0.1", ["127.0.0.1"])
    assert not host_allowed("127.0.0.2", ["127.0.0.1"])
    assert not host_allowed("upsampler.com", [])


def test_userinfo_tricks_against_loopback_make_no_request(
    image_host: TinyHttp, tmp_path: Path
) -> None:
    for url in (
        f"http://127.0.0.1@evil.test:{image_host.port}/photo.png",
        f"http://evil.test@127.0.0.1:{image_host.port}/photo.png",
    ):
        with pytest.raises(UpsamplerResultRejected, match="user name"):
            fetch_result(url, tmp_path / "r.png", allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES)
    assert image_host.received == []


def test_a_declared_content_length_over_the_cap_is_refused(
    image_host: TinyHttp, tmp_path: Path
) -> None:
    with pytest.raises(UpsamplerResultRejected, match="4096 bytes"):
        fetch_result(
            f"{image_host.url}/big", tmp_path / "r.png", allowed_hosts=LOOPBACK, max_bytes=4095
        )
    assert list(tmp_path.iterdir()) == []
    assert (
        fetch_result(
            f"{image_host.url}/big", tmp_path / "r.png", allowed_hosts=LOOPBACK, max_bytes=4096
        )
        == 4096
    )


def test_a_streamed_body_over_the_cap_is_cut_off_and_nothing_is_left(
    image_host: TinyHttp,
    client: UpsamplerClient,
    local: LocalUpsampler,
    tmp_path: Path,
) -> None:
    with pytest.raises(UpsamplerResultRejected, match="larger than the 1000 bytes"):
        fetch_result(
            f"{image_host.url}/stream", tmp_path / "r.png", allowed_hosts=LOOPBACK, max_bytes=1000
        )
    local.next_job(chunked=True, oversize=300_000)
    done = finished(client, local, submit_photo(client, image_host))
    assert done.image_url is not None
    with requests.get(done.image_url, stream=True, timeout=5) as raw:
        assert "Content-Length" not in raw.headers
    with pytest.raises(UpsamplerResultRejected, match="larger than"):
        fetch_result(done.image_url, tmp_path / "r.png", allowed_hosts=LOOPBACK, max_bytes=100_000)

    assert list(tmp_path.iterdir()) == []


def test_non_200_answers_are_refused_and_5xx_is_transient(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, tmp_path: Path
) -> None:
    local.next_job(result_status=403)
    forbidden = finished(client, local, submit_photo(client, image_host))
    assert forbidden.image_url is not None
    dest = tmp_path / "r.png"

    with pytest.raises(UpsamplerResultRejected, match="HTTP 403") as refused:
        fetch_result(forbidden.image_url, dest, allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES)
    with pytest.raises(UpsamplerResultRejected, match="HTTP 404"):
        fetch_result(f"{image_host.url}/nothing", dest, allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES)
    with pytest.raises(UpsamplerResultRejected, match="empty"):
        fetch_result(f"{image_host.url}/empty", dest, allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES)
    with pytest.raises(UpsamplerTransientError, match="HTTP 503") as busy:
        fetch_result(f"{image_host.url}/busy", dest, allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES)

    assert refused.value.status_code == 403
    assert busy.value.retry_after == 4.0
    assert list(tmp_path.iterdir()) == []


def test_expired_results_are_refused(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, tmp_path: Path
) -> None:
    done = finished(client, local, submit_photo(client, image_host))
    assert done.image_url is not None
    local.expire_results(done.id)

    with pytest.raises(UpsamplerResultRejected, match="HTTP 404"):
        fetch_result(
            done.image_url, tmp_path / "r.png", allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES
        )


def test_redirects_are_followed_only_to_allowed_urls(image_host: TinyHttp, tmp_path: Path) -> None:
    dest = tmp_path / "r.png"

    with pytest.raises(UpsamplerResultRejected, match="https"):
        fetch_result(
            f"{image_host.url}/redirect-out", dest, allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES
        )
    written = fetch_result(
        f"{image_host.url}/redirect-in", dest, allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES
    )

    assert written == len(PHOTO) and dest.read_bytes() == PHOTO


def test_a_network_error_while_fetching_is_transient(tmp_path: Path, refused_port: int) -> None:
    url = f"http://127.0.0.1:{refused_port}/r.png"
    with pytest.raises(UpsamplerTransientError, match="network error"):
        fetch_result(
            url, tmp_path / "r.png", allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES, timeout=1
        )


# ----------------------------------------------------------------------------- the local server


def test_jobs_can_be_made_to_fail_or_come_back_the_wrong_size(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, tmp_path: Path
) -> None:
    local.next_job(fail="Insufficient credits")
    local.next_job(factor_delta=-1)
    local.next_job(size_offset=-10)
    local.next_job(non_image=True)

    jobs = [finished(client, local, submit_photo(client, image_host)) for _ in range(4)]

    failed, smaller, off_by_ten, not_image = jobs
    assert failed.status == "FAILED" and failed.error == "Insufficient credits"
    assert failed.image_url is None and failed.credit_cost is None
    sizes: list[tuple[int, int] | None] = []
    for job in (smaller, off_by_ten, not_image):
        assert job.image_url is not None
        dest = tmp_path / f"{job.id}.png"
        fetch_result(job.image_url, dest, allowed_hosts=LOOPBACK, max_bytes=MAX_BYTES)
        try:
            with Image.open(dest) as image:
                sizes.append(image.size)
        except OSError:
            sizes.append(None)
    assert sizes == [(120, 90), (150, 110), None]


def test_the_input_must_be_fetchable(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp
) -> None:
    job = client.submit(f"{image_host.url}/gone.png", 4, "universal", None)
    done = finished(client, local, job)
    assert done.status == "FAILED" and done.error and "HTTP 404" in done.error


def test_callbacks_can_be_dropped_swapped_or_lie(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp, receiver: TinyHttp
) -> None:
    local.next_job(drop_callback=True)
    dropped = submit_photo(client, image_host, receiver)
    local.wait_for(dropped.id)
    assert local.wait_idle(5)
    assert receiver.received == []
    assert local.callbacks(dropped.id)[0]["dropped"] is True

    local.next_job(
        fail="Failed to process image due to an internal error.", callback_claims_success=True
    )
    liar = submit_photo(client, image_host, receiver)
    (lie,) = receiver.wait_for(1)
    claimed = parse_job(json.loads(lie))
    assert claimed.status == "SUCCESS" and claimed.id == liar.id
    assert client.status(liar.id).status == "FAILED"

    local.next_job(callback_from=dropped.id)
    swapped = submit_photo(client, image_host, receiver)
    bodies = receiver.wait_for(2)
    assert parse_job(json.loads(bodies[1])).id == dropped.id
    assert local.wait_idle(5)
    assert local.callbacks(swapped.id)[0]["body"]["id"] == dropped.id

    record = local.send_callback(
        liar.id,
        to_job=swapped.id,
        overrides={"status": "SUCCESS", "imageUrl": "https://evil.test/x.png"},
    )
    assert record["ok"]
    forged = json.loads(receiver.wait_for(3)[2])
    assert forged["id"] == liar.id and forged["imageUrl"] == "https://evil.test/x.png"


def test_held_jobs_stay_in_progress_until_released(
    client: UpsamplerClient, local: LocalUpsampler, image_host: TinyHttp
) -> None:
    from tests.conftest import wait_until

    local.next_job(hold=True)
    job = submit_photo(client, image_host)

    # Its work done, the job waits for the release, still IN_PROGRESS, the server still busy.
    wait_until(lambda: local.jobs()[0]["held"], timeout=10)
    assert client.status(job.id).status == "IN_PROGRESS"
    assert not local.wait_idle(0)
    local.release(job.id)
    assert finished(client, local, job).status == "SUCCESS"


def test_control_endpoints_drive_the_same_state(
    local: LocalUpsampler, image_host: TinyHttp, sleeps: list[float]
) -> None:
    with requests.Session() as http:
        assert http.get(f"{local.url}/_local/health", timeout=5).json() == {"ok": True}
        assert (
            http.post(
                f"{local.url}/_local/next-job", json={"delay": 0.05, "fail": "nope"}, timeout=5
            ).json()["armed"]
            == 1
        )
        assert (
            http.post(f"{local.url}/_local/next-job", json={"bogus": 1}, timeout=5).status_code
            == 400
        )
        assert (
            http.post(
                f"{local.url}/_local/fail-next", json={"status": 429, "retry_after": 3}, timeout=5
            ).status_code
            == 200
        )
        with UpsamplerClient(API_KEY, local.api_base, sleep=sleeps.append) as upsampler:
            job = submit_photo(upsampler, image_host)
            local.wait_for(job.id)
            assert upsampler.status(job.id).error == "nope"
        recorded = http.get(f"{local.url}/_local/requests", timeout=5).json()
        state = http.get(f"{local.url}/_local/state", timeout=5).json()
        assert http.post(f"{local.url}/_local/reset", timeout=5).json() == {"reset": True}

    assert sleeps == [3.0]
    assert [s["status"] for s in recorded["submissions"]] == [429, 200]
    assert [j["status"] for j in state["jobs"]] == ["FAILED"]
    assert state["api_key_set"] is True and API_KEY not in json.dumps(state)
    assert local.jobs() == []


def test_the_command_line_serves_until_sigterm() -> None:
    from tests.conftest import read_listening_url

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("UPSAMPLER_API_KEY", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devservers.upsampler_local",
            "--port",
            "0",
            "--api-key",
            API_KEY,
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url, started = read_listening_url(process)
        with requests.get(f"{url}/_local/health", timeout=5) as answer:
            assert answer.json() == {"ok": True}
        with requests.get(f"{url}/api/v1/status/x", timeout=2) as unauth:
            assert unauth.status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=10)
    output = started + rest
    assert process.returncode == 0
    assert b"listening on" in output and API_KEY.encode() not in output


# ----------------------------------------------------------------------------- secrets


def test_the_api_key_never_appears_in_errors_reprs_or_logs(
    caplog: pytest.LogCaptureFixture,
    local: LocalUpsampler,
    image_host: TinyHttp,
    sleeps: list[float],
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = TinyHttp(
        lambda request: Response(
            json.dumps({"error": f"bad credentials: {request.headers.get('Authorization')}"}),
            status=403,
            content_type="application/json",
        )
    )
    errors: list[UpsamplerError] = []
    try:
        with UpsamplerClient(API_KEY, echo.url, sleep=sleeps.append) as echoing:
            with pytest.raises(UpsamplerRequestError) as echoed:
                echoing.status("j1")
            errors.append(echoed.value)
            reprs = [repr(echoing)]
        local.fail_next(500, count=10)
        with UpsamplerClient(API_KEY, local.api_base, max_retries=1, sleep=sleeps.append) as c:
            with pytest.raises(UpsamplerTransientError) as exhausted:
                submit_photo(c, image_host)
            errors.append(exhausted.value)
            reprs.append(repr(c))
    finally:
        echo.close()

    assert "bad credentials: Bearer [redacted]" in str(errors[0])
    for error in errors:
        assert API_KEY not in str(error) and API_KEY not in repr(error)
    assert all(API_KEY not in text for text in reprs)
    assert caplog.records, "the retry should have been logged"
    assert API_KEY not in caplog.text
