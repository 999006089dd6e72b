"""Issue 12, finding 9: the Upsampler engine pays once per job, delivers only JPEG, PNG or WebP,
and fetches results only from public addresses it checked itself.

Against the local Upsampler-compatible server, a real worker where a crash is the point, and
real sockets on loopback; only DNS answers are faked (for names this machine cannot resolve).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pyvips
from flask import Flask
from PIL import Image
from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from devservers.common import QuietHandler, ServerThread
from devservers.stripe_local import LocalStripe
from devservers.upsampler_local import LocalUpsampler
from storefront import transactions
from storefront.extensions import db
from storefront.jobs.outcomes import begin_submission
from storefront.models import Job, JobEvent, utcnow
from tests.conftest import (
    UPSAMPLER_TEST_KEY,
    LiveApp,
    WorkerProcess,
    config_as_environment,
    wait_until,
)
from tests.factories import make_attachment, make_job, resolve
from worker.engines.imaging import UnsupportedImage, image_size
from worker.upsampler_client import (
    UpsamplerClient,
    UpsamplerOutcomeUnknown,
    UpsamplerResultRejected,
    UpsamplerTransientError,
    check_result_url,
    fetch_result,
)

KEY = UPSAMPLER_TEST_KEY
REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 10_000_000
UNCERTAIN = "never paid for twice"


def _png(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


PHOTO = _png()
OTHER = _png(colour=(200, 10, 10))


# ----------------------------------------------------------------------------- helpers


def _paid(live: LiveApp, stripe_local: LocalStripe) -> Job:
    attachment = make_attachment(live.app, width=80, height=60)
    db.session.commit()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": "buyer@example.com"}
    assert live.app.test_client().post("/checkout", data=data).status_code == 303
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
    assert job is not None
    stripe_local.pay(job.stripe_checkout_session_id)
    return wait_until(lambda: (j := _fresh(job.job_id)).status == "pending" and j)


def _fresh(job_id: str) -> Job:
    db.session.expire_all()
    return db.session.scalars(select(Job).where(Job.job_id == job_id)).one()


def _events(job_id: str, kind: str) -> int:
    query = select(func.count(JobEvent.id)).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
    return db.session.scalar(query) or 0


def _upscale_in_process(live: LiveApp, job_id: str) -> str:
    from worker.upscaling import upscale_job

    with live.app.app_context():
        return upscale_job(job_id)


def _check_in_process(live: LiveApp, job_id: str) -> str:
    from worker.upsampler import check

    with live.app.app_context():
        return check(job_id)


@pytest.fixture
def first_of_several_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run upscales in-process as RQ's first attempt: a failure is given back for a retry."""
    monkeypatch.setattr("worker.upscaling._is_last_attempt", lambda: False)


def _lose_the_commit_after_submitting(
    monkeypatch: pytest.MonkeyPatch, upsampler: LocalUpsampler
) -> list[str]:
    """Make the first commit after Upsampler created a job fail, as a database outage would."""
    real_commit = transactions.commit
    lost: list[str] = []
    # Only the worker's commits (this thread's): the live server's threads commit too meanwhile.
    worker_thread = threading.get_ident()

    def commit(*after: Callable[[], object]) -> None:
        if not lost and threading.get_ident() == worker_thread and upsampler.jobs():
            lost.append("the commit recording the provider job")
            transactions.rollback()
            raise OperationalError("COMMIT", {}, Exception("the database went away"))
        real_commit(*after)

    monkeypatch.setattr(transactions, "commit", commit)
    return lost


def _credits_charged(upsampler: LocalUpsampler) -> int:
    return sum(job["credit_cost"] or 0 for job in upsampler.jobs() if job["status"] == "SUCCESS")


# ----------------------------------------------------------------------------- 1. paid once


def test_a_lost_commit_after_submitting_takes_up_the_same_provider_job(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    monkeypatch: pytest.MonkeyPatch,
    first_of_several_attempts: None,
) -> None:
    upsampler.set_behaviour(drop_callback=True)
    job = _paid(live_app, stripe_local)
    lost = _lose_the_commit_after_submitting(monkeypatch, upsampler)

    with pytest.raises(OperationalError):
        _upscale_in_process(live_app, job.job_id)
    given_back = _fresh(job.job_id)
    assert lost and (given_back.status, given_back.upsampler_job_id) == ("pending", None)
    # RQ's retry: the submission is open, so it takes up the job Upsampler already has.
    assert _upscale_in_process(live_app, job.job_id) == "submitted"
    (provider,) = upsampler.jobs()
    upsampler.wait_for(provider["id"], timeout=20)
    assert _check_in_process(live_app, job.job_id) == "completed"

    done = _fresh(job.job_id)
    assert [s["status"] for s in upsampler.submissions()] == [200]
    assert done.upsampler_job_id == provider["id"]
    charged = upsampler.job(provider["id"])["creditCost"]
    assert done.credits_used == _credits_charged(upsampler) == charged
    assert (done.status, done.payment_status) == ("completed", "paid")
    assert _events(job.job_id, "submitted") == 1
    assert stripe_local.state.refunds == {}


def test_a_lost_commit_with_nothing_noted_fails_and_refunds_without_sending_again(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    monkeypatch: pytest.MonkeyPatch,
    first_of_several_attempts: None,
) -> None:
    upsampler.set_behaviour(drop_callback=True)
    job = _paid(live_app, stripe_local)
    _lose_the_commit_after_submitting(monkeypatch, upsampler)
    with pytest.raises(OperationalError):
        _upscale_in_process(live_app, job.job_id)
    # Redis lost the note too (restarted without persistence): nothing says which job it was.
    redis = Redis.from_url(live_app.app.config["REDIS_URL"])
    try:
        noted = list(redis.scan_iter("smi:upsampler-submission:*"))
        assert len(noted) == 1
        redis.delete(*noted)
    finally:
        redis.close()

    assert _upscale_in_process(live_app, job.job_id) == "failed"

    failed = _fresh(job.job_id)
    assert (failed.status, failed.payment_status) == ("failed", "refunded")
    assert UNCERTAIN in (failed.error_message or "")
    assert len(upsampler.jobs()) == 1 and len(upsampler.submissions()) == 1
    assert len(stripe_local.state.refunds) == 1


@pytest.mark.slow
def test_a_worker_killed_waiting_for_the_answer_never_sends_the_job_twice(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    from storefront.jobs.recovery import sweep

    # Upsampler creates the job at once but answers late; the worker dies waiting.
    upsampler.set_behaviour(drop_callback=True, answer_delay=20)
    job = _paid(live_app, stripe_local)
    first = start_worker()
    wait_until(lambda: upsampler.jobs(), timeout=30)
    first.kill()
    upsampler.set_behaviour(answer_delay=0)  # a second submission would be answered at once

    with live_app.app.app_context():
        report = sweep(now=utcnow() + dt.timedelta(hours=2))  # long after the worker died
    assert report.requeued == [job.job_id]
    start_worker()
    # Until the job is refunded, or Upsampler gets it a second time.
    wait_until(
        lambda: len(upsampler.jobs()) > 1 or _fresh(job.job_id).payment_status == "refunded",
        timeout=40,
    )

    assert len(upsampler.jobs()) == 1
    failed = _fresh(job.job_id)
    assert (failed.status, failed.payment_status) == ("failed", "refunded")
    assert UNCERTAIN in (failed.error_message or "")
    assert len(stripe_local.state.refunds) == 1


def test_an_answer_that_may_hide_a_created_job_is_never_sent_again(
    live_app: LiveApp, stripe_local: LocalStripe, upsampler: LocalUpsampler
) -> None:
    upsampler.fail_next(502, count=1, path="/precise-upscale")
    job = _paid(live_app, stripe_local)

    assert _upscale_in_process(live_app, job.job_id) == "failed"

    failed = _fresh(job.job_id)
    assert (failed.status, failed.payment_status) == ("failed", "refunded")
    assert UNCERTAIN in (failed.error_message or "") and "HTTP 502" in (failed.error_message or "")
    assert [s["status"] for s in upsampler.submissions()] == [502]


def test_a_submission_turned_away_is_sent_again_and_taken_once(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    first_of_several_attempts: None,
) -> None:
    upsampler.set_behaviour(drop_callback=True)
    upsampler.fail_next(429, count=5, retry_after=0, path="/precise-upscale")
    job = _paid(live_app, stripe_local)

    with pytest.raises(UpsamplerTransientError, match="429"):
        _upscale_in_process(live_app, job.job_id)
    assert _fresh(job.job_id).upsampler_submission_key is None  # nothing was taken
    assert _upscale_in_process(live_app, job.job_id) == "submitted"

    assert [s["status"] for s in upsampler.submissions()] == [429] * 5 + [200]
    (provider,) = upsampler.jobs()
    assert _fresh(job.job_id).upsampler_job_id == provider["id"]


def test_a_run_after_a_failure_may_submit_anew_but_one_run_only_once(app: Flask) -> None:
    job = make_job(make_attachment(app), status="processing", payment_status="paid")
    db.session.commit()

    first = begin_submission(job.job_id)
    assert first is not None and begin_submission(job.job_id) is None
    # The job failed since (and the admin put it back): a new run may send it again.
    db.session.execute(
        Job.__table__.update()
        .where(Job.job_id == job.job_id)
        .values(failed_at=utcnow() + dt.timedelta(seconds=1), upsampler_job_id="old")
    )
    db.session.commit()
    second = begin_submission(job.job_id)
    assert second is not None and second != first
    assert _fresh(job.job_id).upsampler_job_id is None
    # A job sent before submissions were recorded has its provider id only: it counts as sent.
    older = make_job(
        make_attachment(app), status="processing", payment_status="paid", upsampler_job_id="u1"
    )
    db.session.commit()
    assert begin_submission(older.job_id) is None
    assert _fresh(older.job_id).upsampler_job_id == "u1"


class HangUpServer:
    """Reads each request whole, then hangs up without a word, as a broken connection would."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(body) < length:
                    body += connection.recv(65536)
                self.requests.append(head.split(b"\r\n", 1)[0])

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def test_a_connection_broken_after_sending_a_submission_is_not_retried() -> None:
    server = HangUpServer()
    sleeps: list[float] = []
    try:
        with UpsamplerClient(KEY, f"{server.url}/api/v1", sleep=sleeps.append) as api:
            with pytest.raises(UpsamplerOutcomeUnknown, match="not sent again"):
                api.submit("https://shop.test/a.png", 4, "realism", None)
            sent = list(server.requests)
            # A status call changes nothing: it is asked again.
            with pytest.raises(UpsamplerTransientError):
                api.status("8c1e4b8e-0000-4000-8000-000000000000")
    finally:
        server.close()
    assert sent == [b"POST /api/v1/precise-upscale HTTP/1.1"]
    assert len(server.requests) == 1 + 5 and len(sleeps) == 4


# ----------------------------------------------------------------------------- 2. result types


@pytest.mark.parametrize("result_format", ["tiff", "gif", "heif", "vips", "svg", "matrix"])
def test_results_in_other_formats_fail_and_refund(
    live_app: LiveApp, stripe_local: LocalStripe, upsampler: LocalUpsampler, result_format: str
) -> None:
    # The right size, under a .png name, but another kind of file for libvips to parse.
    upsampler.set_behaviour(drop_callback=True, result_format=result_format)
    job = _paid(live_app, stripe_local)
    assert _upscale_in_process(live_app, job.job_id) == "submitted"
    upsampler.wait_for(_fresh(job.job_id).upsampler_job_id or "", timeout=20)

    assert _check_in_process(live_app, job.job_id) == "failed"

    failed = _fresh(job.job_id)
    assert (failed.status, failed.payment_status) == ("failed", "refunded")
    assert "only JPEG, PNG or WebP" in (failed.error_message or "")
    assert failed.upscaled_file_path is None
    folder = resolve(live_app.app, f"deliveries/{job.job_id}")
    assert not folder.exists() or list(folder.iterdir()) == []


def _write_formats(folder: Path) -> dict[str, Path]:
    """A 40x30 image in every format the tests care about, each under its usual suffix."""
    image = pyvips.Image.new_from_buffer(PHOTO, "")
    paths: dict[str, Path] = {}
    for name, suffix in {
        "jpeg": ".jpg",
        "png": ".png",
        "webp": ".webp",
        "tiff": ".tif",
        "gif": ".gif",
        "heif": ".avif",
        "vips": ".v",
        "matrix": ".mat",
        "csv": ".csv",
    }.items():
        target = image.extract_band(0) if name in ("matrix", "csv") else image
        target.write_to_file(str(folder / f"in{suffix}"))
        paths[name] = folder / f"in{suffix}"
    paths["svg"] = folder / "in.svg"
    paths["svg"].write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30"><rect width="40" '
        'height="30"/></svg>'
    )
    return paths


def test_image_size_reads_jpeg_png_and_webp_only_whatever_the_name(tmp_path: Path) -> None:
    for name, path in _write_formats(tmp_path).items():
        disguised = path.rename(tmp_path / f"{name}-result.png")
        if name in ("jpeg", "png", "webp"):
            assert image_size(disguised) == (40, 30)
        else:
            with pytest.raises(UnsupportedImage, match="only JPEG, PNG or WebP"):
                image_size(disguised)


WORKER_SCRIPT = """
import json, sys
from pathlib import Path
import pyvips
from worker.context import task_app
from worker.engines import get_engine

task_app()  # what every task does first
folder = Path(sys.argv[1])
found = {}
for path in sorted(folder.glob("in.*")):
    try:
        found[path.name] = pyvips.Image.new_from_file(str(path)).get("vips-loader")
    except pyvips.Error:
        found[path.name] = "refused"
for engine in ("local", "neural"):
    for name in ("in.jpg", "in.png", "in.webp"):
        out = folder / f"{engine}-{name}.png"
        result = get_engine(engine, {}).upscale(folder / name, 2, out)
        found[out.name] = [result.width, result.height]
print(json.dumps(found))
"""


def test_worker_processes_refuse_other_libvips_loaders_and_still_read_originals(
    app: Flask, tmp_path: Path
) -> None:
    _write_formats(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, str(tmp_path)],
        cwd=REPO_ROOT,
        env=config_as_environment(dict(app.config)),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    found = json.loads(run.stdout.decode().strip().splitlines()[-1])

    assert {found[f"in{s}"] for s in (".tif", ".gif", ".avif", ".v", ".mat", ".csv", ".svg")} == {
        "refused"
    }
    assert (found["in.jpg"], found["in.png"], found["in.webp"]) == (
        "jpegload",
        "pngload",
        "webpload",
    )
    for engine in ("local", "neural"):
        for name in ("in.jpg", "in.png", "in.webp"):
            assert found[f"{engine}-{name}.png"] == [80, 60]
    # The test process itself is left as it was.
    assert pyvips.Image.new_from_file(str(tmp_path / "in.tif")).width == 40


# ----------------------------------------------------------------------------- 3. addresses


class ImageServer:
    """Serves `body` at every path from `host` (port 0: one the kernel picks), optionally TLS."""

    def __init__(
        self,
        body: bytes = PHOTO,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        redirect: str | None = None,
        ssl_context: tuple[str, str] | None = None,
    ) -> None:
        self.requests: list[str] = []

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            request = Request(environ)
            self.requests.append(f"{request.host}{request.path}")
            if redirect and request.path == "/redirect":
                response = Response(status=302, headers={"Location": redirect})
            else:
                response = Response(body, mimetype="image/png")
            return response(environ, start_response)

        self._server = make_server(
            host, port, app, threaded=True, request_handler=QuietHandler, ssl_context=ssl_context
        )
        self.port = self._server.port
        self._serving = ServerThread(self._server, name=f"image-server-{self.port}")
        self._serving.start()

    def close(self) -> None:
        """Stop serving."""
        self._serving.stop()


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    """A result host on 127.0.0.1."""
    server = ImageServer()
    yield server
    server.close()


class FakeDNS:
    """DNS answers for a few names: `answers[name]` is a list of answers, one per lookup (the
    last one repeats); every lookup of those names is kept in `lookups`."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []

    def __setitem__(self, name: str, answers: list[list[str]]) -> None:
        self.answers[name] = answers

    def reply(self, name: str) -> list[str]:
        """Count a lookup of `name` and return its answer for this lookup."""
        self.lookups.append(name)
        answers = self.answers[name]
        return answers[min(self.lookups.count(name), len(answers)) - 1]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    """socket.getaddrinfo, with FakeDNS answering for the names the test gives it."""
    fake = FakeDNS()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in fake.answers:
            addresses = fake.reply(host)
            return [info for address in addresses for info in real(address, port, *args, **kwargs)]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every connection urllib3 opens; those to anything but a loopback IP are refused."""
    import urllib3.util.connection as urllib3_connection

    made: list[tuple[str, int]] = []
    real = urllib3_connection.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        made.append(address)
        if address[0] not in ("127.0.0.1", "127.0.0.2", "::1"):
            raise ConnectionRefusedError("the test allows no connection off loopback")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3_connection, "create_connection", create_connection)
    return made


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_a_listed_name_resolving_to_a_non_public_address_is_refused_before_connecting(
    address: str,
    dns: FakeDNS,
    connections: list[tuple[str, int]],
    tmp_path: Path,
) -> None:
    dns["cdn.upsampler.com"] = [[address]]

    with pytest.raises(UpsamplerResultRejected, match="only from public addresses"):
        fetch_result(
            "https://cdn.upsampler.com/r.png",
            tmp_path / "r.png",
            allowed_hosts=["upsampler.com"],
            max_bytes=MAX_BYTES,
        )
    assert connections == [] and list(tmp_path.iterdir()) == []


def test_one_non_public_address_among_public_ones_refuses_the_host(
    dns: FakeDNS, connections: list[tuple[str, int]], tmp_path: Path
) -> None:
    dns["cdn.upsampler.com"] = [["93.184.215.14", "2606:4700::1111", "10.0.0.9"]]
    with pytest.raises(UpsamplerResultRejected, match=r"a private address \(10\.0\.0\.9\)"):
        fetch_result(
            "https://cdn.upsampler.com/r.png",
            tmp_path / "r.png",
            allowed_hosts=["upsampler.com"],
            max_bytes=MAX_BYTES,
        )
    assert connections == []


def test_loopback_is_allowed_only_for_a_host_listed_as_loopback(
    image_server: ImageServer,
    dns: FakeDNS,
    connections: list[tuple[str, int]],
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{image_server.port}/r.png"
    assert fetch_result(url, tmp_path / "a.png", allowed_hosts=["127.0.0.1"], max_bytes=MAX_BYTES)
    # "localhost" is listed, but resolves somewhere private: not loopback, so refused.
    dns["localhost"] = [["10.0.0.1"]]
    with pytest.raises(UpsamplerResultRejected, match="a private address"):
        fetch_result(
            f"http://localhost:{image_server.port}/r.png",
            tmp_path / "b.png",
            allowed_hosts=["localhost"],
            max_bytes=MAX_BYTES,
        )
    assert connections == [("127.0.0.1", image_server.port)]


def test_a_listed_ip_literal_must_be_public() -> None:
    for url, listed in (
        ("https://10.0.0.7/r.png", "10.0.0.7"),
        ("https://169.254.169.254/r.png", "169.254.169.254"),
        ("https://[::ffff:a9fe:a9fe]/r.png", "::ffff:169.254.169.254"),
    ):
        with pytest.raises(UpsamplerResultRejected, match="only from public addresses"):
            check_result_url(url, [listed])


def test_the_connection_goes_to_the_address_checked_not_to_a_later_answer(
    image_server: ImageServer, dns: FakeDNS, tmp_path: Path
) -> None:
    # A second lookup would say 127.0.0.2, where someone else listens on the same port.
    elsewhere = ImageServer(OTHER, host="127.0.0.2", port=image_server.port)
    dns["localhost"] = [["127.0.0.1"], ["127.0.0.2"]]
    try:
        written = fetch_result(
            f"http://localhost:{image_server.port}/photo.png",
            tmp_path / "r.png",
            allowed_hosts=["localhost"],
            max_bytes=MAX_BYTES,
        )
    finally:
        elsewhere.close()

    assert written == len(PHOTO) and (tmp_path / "r.png").read_bytes() == PHOTO
    assert dns.lookups == ["localhost"]
    assert elsewhere.requests == []
    assert image_server.requests == [f"localhost:{image_server.port}/photo.png"]


def test_a_redirect_to_a_name_resolving_inside_is_refused(
    dns: FakeDNS, connections: list[tuple[str, int]], tmp_path: Path
) -> None:
    server = ImageServer(redirect="https://inside.upsampler.com/secret")
    dns["inside.upsampler.com"] = [["192.168.0.10"]]
    try:
        with pytest.raises(UpsamplerResultRejected, match="a private address"):
            fetch_result(
                f"http://127.0.0.1:{server.port}/redirect",
                tmp_path / "r.png",
                allowed_hosts=["127.0.0.1", "upsampler.com"],
                max_bytes=MAX_BYTES,
            )
    finally:
        server.close()
    assert connections == [("127.0.0.1", server.port)]


def _certificate(folder: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate for DNS name `name` (it is its own CA): (cert, key) paths."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed (apt-get install openssl)")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key)


def test_https_is_verified_against_the_name_while_connecting_to_the_checked_address(
    dns: FakeDNS, connections: list[tuple[str, int]], tmp_path: Path
) -> None:
    dns["localhost"] = [["127.0.0.1"]]
    right = _certificate(tmp_path, "localhost")
    wrong = _certificate(tmp_path, "elsewhere.test")
    good = ImageServer(ssl_context=right)
    bad = ImageServer(ssl_context=wrong)
    try:
        written = fetch_result(
            f"https://localhost:{good.port}/photo.png",
            tmp_path / "r.png",
            allowed_hosts=["localhost"],
            max_bytes=MAX_BYTES,
            verify=right[0],
        )
        with pytest.raises(UpsamplerTransientError, match="SSLError"):
            fetch_result(
                f"https://localhost:{bad.port}/photo.png",
                tmp_path / "s.png",
                allowed_hosts=["localhost"],
                max_bytes=MAX_BYTES,
                verify=wrong[0],
            )
    finally:
        good.close()
        bad.close()

    assert written == len(PHOTO)
    assert connections == [("127.0.0.1", good.port), ("127.0.0.1", bad.port)]
    assert good.requests == [f"localhost:{good.port}/photo.png"] and bad.requests == []
