"""A download link is charged the bytes it serves: DOWNLOAD_MAX_COUNT file sizes, however asked."""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from storefront.extensions import db
from storefront.jobs.delivery import renew_link, token_digest
from storefront.models import DownloadLog, Job
from tests.admin_helpers import completed_job, fresh
from tests.conftest import LiveApp, wait_until
from tests.factories import resolve

TOKEN = "0123456789abcdef" * 4
SIZE = 100_000
CONTENT = bytes(range(256)) * (SIZE // 256) + bytes(SIZE % 256)
FILE_URL = f"/download/{TOKEN}/file"


def _job(app: Flask, content: bytes = CONTENT) -> Job:
    return completed_job(app, content=content, download_token=token_digest(TOKEN))


def _logged(job_id: str) -> list[DownloadLog]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(DownloadLog).where(DownloadLog.job_id == job_id).order_by(DownloadLog.id)
        )
    )


def _fetch(
    client: FlaskClient, range_: str | None = None, method: str = "GET", **headers: str
) -> TestResponse:
    """Ask for the file; the whole body is read and closed, as a server does once it is sent."""
    if range_ is not None:
        headers["Range"] = range_
    return client.open(FILE_URL, method=method, headers=headers, buffered=True)


def _broken_off(client: FlaskClient, chunks: int) -> bytes:
    """Start a download, take `chunks` pieces of its body, and go away (the body is closed)."""
    response = client.get(FILE_URL, buffered=False)
    assert response.status_code == 200
    body = iter(response.response)
    received = b"".join(next(body) for _ in range(chunks))
    response.close()
    return received


def test_ranges_past_byte_0_are_charged_and_stopped_after_the_limit(
    app: Flask, client: FlaskClient
) -> None:
    """Finding 1: `Range: bytes=1-` got all but one byte, 15 times, and counted nothing."""
    job = _job(app)
    answers = [_fetch(client, "bytes=1-") for _ in range(15)]
    served = [a for a in answers if a.status_code == 206]
    assert len(served) == 10 and all(a.data == CONTENT[1:] for a in served)
    assert [a.status_code for a in answers[10:]] == [410] * 5
    assert "This link has been used up" in answers[10].get_data(as_text=True)
    done = fresh(job.job_id)
    assert (done.download_count, done.download_bytes) == (10, 10 * (SIZE - 1))
    assert [row.bytes_sent for row in _logged(job.job_id)] == [SIZE - 1] * 10
    landing = client.get(f"/download/{TOKEN}")
    assert landing.status_code == 410 and "used up" in landing.get_data(as_text=True)


def test_whole_downloads_and_pieces_count_by_their_bytes(app: Flask, client: FlaskClient) -> None:
    job = _job(app)
    assert _fetch(client).data == CONTENT
    assert fresh(job.job_id).download_count == 1
    # A download in two pieces, as a browser resumes one: one download more, not two.
    first = _fetch(client, "bytes=0-39999")
    rest = _fetch(client, "bytes=40000-")
    assert first.data + rest.data == CONTENT
    assert (fresh(job.job_id).download_count, fresh(job.job_id).download_bytes) == (2, 2 * SIZE)
    # Any byte past a whole number of files starts one more download.
    assert _fetch(client, "bytes=5-5").data == CONTENT[5:6]
    assert fresh(job.job_id).download_count == 3
    assert [row.counted for row in _logged(job.job_id)] == [True, True, False, True]
    assert "Downloads left</dt><dd>7" in client.get(f"/download/{TOKEN}").get_data(as_text=True)


def test_a_download_broken_off_and_resumed_where_it_stopped_counts_once(
    app: Flask, client: FlaskClient
) -> None:
    job = _job(app)
    received = _broken_off(client, chunks=3)
    # The server counts a piece once it was written, i.e. when the next is asked for.
    (cut,) = _logged(job.job_id)
    assert cut.bytes_sent == 2 * 8192 and fresh(job.job_id).download_bytes == 2 * 8192
    rest = _fetch(client, f"bytes={len(received)}-")
    assert rest.status_code == 206 and received + rest.data == CONTENT
    resumed = fresh(job.job_id)
    assert resumed.download_count == 1 and resumed.download_bytes <= SIZE
    assert "Downloads left</dt><dd>9" in client.get(f"/download/{TOKEN}").get_data(as_text=True)


def test_breaking_off_on_purpose_gains_little(app: Flask, client: FlaskClient) -> None:
    """Claiming each time that a broken-off response barely arrived gives back an eighth at most."""
    job = _job(app)
    received, answers = _broken_off(client, chunks=12), 1  # 98,304 bytes taken, 90,112 counted
    while answers < 30:
        response = client.get(FILE_URL, headers={"Range": "bytes=1-"}, buffered=False)
        if response.status_code == 410:
            response.close()
            break
        body = iter(response.response)
        received += b"".join(next(body) for _ in range(12))
        response.close()  # ... and the next request says only byte 0 of this one arrived
        answers += 1
    # 10 whole downloads' worth, and at most 1/(1 - 1/8) times that by breaking off on purpose.
    assert 10 <= answers <= 12 and len(received) < 12 * SIZE
    assert fresh(job.job_id).download_count == 10


def test_the_last_download_can_still_be_finished_but_no_new_one_started(app: Flask) -> None:
    app.config["DOWNLOAD_MAX_COUNT"] = 1
    client = app.test_client()
    job = _job(app)
    received = _broken_off(client, chunks=2)
    assert client.get(f"/download/{TOKEN}").status_code == 410  # no whole download left
    assert _fetch(client).status_code == 410
    rest = _fetch(client, f"bytes={len(received)}-")
    assert rest.status_code == 206 and received + rest.data == CONTENT
    assert fresh(job.job_id).download_count == 1
    assert _fetch(client).status_code == 410


def test_looking_and_asking_for_headers_change_nothing(app: Flask, client: FlaskClient) -> None:
    job = _job(app)
    for _ in range(3):
        assert client.get(f"/download/{TOKEN}").status_code == 200
    head = _fetch(client, method="HEAD")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(SIZE)
    assert (fresh(job.job_id).download_count, fresh(job.job_id).download_bytes) == (0, 0)


def test_renewing_a_link_starts_a_fresh_budget(app: Flask, client: FlaskClient) -> None:
    app.config["DOWNLOAD_MAX_COUNT"] = 2
    job = _job(app)
    assert [_fetch(client).status_code for _ in range(3)] == [200, 200, 410]
    assert renew_link(job.job_id, actor="test")
    db.session.commit()
    assert fresh(job.job_id).download_bytes == 0
    assert _fetch(client, "bytes=1-").status_code == 206
    assert (fresh(job.job_id).download_count, fresh(job.job_id).download_bytes) == (1, SIZE - 1)


def test_parallel_downloads_cannot_overspend(live_app: LiveApp) -> None:
    live_app.app.config["DOWNLOAD_MAX_COUNT"] = 3
    job = _job(live_app.app)
    start = threading.Barrier(8)
    statuses: list[int] = []

    def fetch() -> None:
        start.wait()
        statuses.append(requests.get(f"{live_app.url}{FILE_URL}", timeout=30).status_code)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 3 + [410] * 5
    wait_until(lambda: len(_logged(job.job_id)) == 3)
    assert (fresh(job.job_id).download_count, fresh(job.job_id).download_bytes) == (3, 3 * SIZE)


@pytest.fixture
def big_file() -> bytes:
    """64 MiB: far more than one connection holds in flight."""
    return hashlib.shake_256(b"upscaled").digest(64 * 1024 * 1024)


def _broken_off_over_http(live: LiveApp, path: str, wanted: int) -> bytes:
    """GET over a socket with a small receive buffer, take `wanted` bytes of the body, hang up.

    What the server has written and the buyer has not received is then at most the server's
    send buffer (4 MiB here) and this small one.
    """
    host, port = live.url.removeprefix("http://").split(":")
    with socket.socket() as connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        connection.settimeout(30)
        connection.connect((host, int(port)))
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
        answer = b""
        while len(answer.partition(b"\r\n\r\n")[2]) < wanted:
            answer += connection.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    return body


@pytest.mark.slow  # 64 MiB through a real socket: several seconds
def test_over_http_a_broken_off_download_resumed_counts_once(
    live_app: LiveApp, big_file: bytes
) -> None:
    """What was in flight when the buyer went away is counted, then given back on resuming."""
    job = _job(live_app.app, content=big_file)
    received = _broken_off_over_http(live_app, FILE_URL, 16 * 1024 * 1024)
    assert big_file.startswith(received)
    cut = wait_until(lambda: _logged(job.job_id), timeout=30)[0]
    assert len(received) < cut.bytes_sent < len(big_file)  # the server wrote more than arrived
    url = f"{live_app.url}{FILE_URL}"
    rest = requests.get(url, headers={"Range": f"bytes={len(received)}-"}, timeout=60)
    assert rest.status_code == 206 and received + rest.content == big_file
    wait_until(lambda: len(_logged(job.job_id)) == 2, timeout=30)
    first_row, second_row = _logged(job.job_id)
    assert first_row.bytes_sent == len(received)  # what evidently arrived
    assert second_row.bytes_sent == len(big_file) - len(received)
    done = fresh(job.job_id)
    assert (done.download_count, done.download_bytes) == (1, len(big_file))


# Behind nginx: the app answers with X-Accel-Redirect and nginx sends the bytes (and reads Range).


@pytest.fixture
def accel_client(app: Flask) -> FlaskClient:
    app.config["DOWNLOAD_ACCEL_PREFIX"] = "/protected"
    return app.test_client()


def test_behind_nginx_ranges_are_charged_the_bytes_nginx_sends(
    app: Flask, accel_client: FlaskClient
) -> None:
    job = _job(app)
    answers = [_fetch(accel_client, "bytes=1-") for _ in range(15)]
    handed = [a for a in answers if "X-Accel-Redirect" in a.headers]
    assert len(handed) == 10 and [a.status_code for a in answers[10:]] == [410] * 5
    assert handed[0].headers["X-Accel-Redirect"] == f"/protected/{job.upscaled_file_path}"
    assert handed[0].data == b""  # nginx sends the file
    assert [row.bytes_sent for row in _logged(job.job_id)] == [SIZE - 1] * 10
    assert fresh(job.job_id).download_count == 10


def test_behind_nginx_the_range_is_read_as_nginx_reads_it(
    app: Flask, accel_client: FlaskClient
) -> None:
    job = _job(app)
    assert _fetch(accel_client, "bytes=100-199").status_code == 200
    assert _fetch(accel_client, "bytes=-50").status_code == 200
    # If-Range that is not the file's: nginx sends all of it.
    # If-Range: nginx applies the range when it names its ETag (mtime and size in hex) ...
    stat = resolve(app, job.upscaled_file_path or "").stat()
    etag = f'"{int(stat.st_mtime):x}-{stat.st_size:x}"'
    assert _fetch(accel_client, "bytes=0-9", **{"If-Range": etag}).status_code == 200
    # ... and sends all of the file when it names another.
    stale = _fetch(accel_client, "bytes=100-199", **{"If-Range": '"not-the-etag"'})
    assert stale.status_code == 200
    # Several ranges (nginx would send each) and ranges past the end are refused.
    assert _fetch(accel_client, "bytes=0-,0-").status_code == 416
    assert _fetch(accel_client, f"bytes={SIZE}-").status_code == 416
    assert _fetch(accel_client, method="HEAD").status_code == 200
    assert [row.bytes_sent for row in _logged(job.job_id)] == [100, 50, 10, SIZE, 0]
    assert fresh(job.job_id).download_bytes == 160 + SIZE
