"""Originals, previews and deliveries in a real S3 store (SeaweedFS on loopback).

The web app and the workers share no folder here: each has its own WORK_DIR and a STORAGE_DIR that
must stay empty. Downloads are redirected to presigned URLs; cleanup works on objects.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from devservers.seaweed import LocalS3
from devservers.smtp_sink import SinkHandler, text_of
from devservers.stripe_local import LocalStripe
from devservers.upsampler_local import LocalUpsampler
from storefront import create_app
from storefront.extensions import db
from storefront.jobs.delivery import token_digest
from storefront.maintenance import cleanup
from storefront.models import Job, utcnow
from storefront.queues import UPSCALE_QUEUE, redis_connection
from storefront.storage import backend
from tests.admin_helpers import completed_job, fresh
from tests.conftest import LiveApp, WorkerProcess, wait_until
from tests.factories import make_attachment, make_job, store_bytes

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/download/([0-9a-f]{64}))")
TOKEN = "ab" * 32


@pytest.fixture
def app_config(app_config: dict[str, Any], s3_settings: dict[str, str]) -> dict[str, Any]:
    """The test app on a fresh bucket; its STORAGE_DIR must never be made."""
    app_config.update(s3_settings)
    app_config["STORAGE_DIR"] = str(Path(app_config["WORK_DIR"]).parent / "web-storage-unused")
    return app_config


def _objects(app: Flask, prefix: str = "") -> dict[str, int]:
    return {found.key: found.size for found in backend(app).objects(prefix)}


def _paid(live: LiveApp, stripe_local: LocalStripe, width: int = 120, height: int = 90) -> Job:
    attachment = make_attachment(live.app, width=width, height=height, title="Harbour")
    db.session.commit()
    client = live.app.test_client()
    data = {"attachment_id": attachment.id, "resolution": "4x", "email": "buyer@example.com"}
    assert client.post("/checkout", data=data).status_code == 303
    job = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
    assert job is not None
    stripe_local.pay(job.stripe_checkout_session_id)
    return job


def _ready_link(sink: SinkHandler) -> str:
    (mail,) = sink.wait_for(1, timeout=40, where=lambda m: "ready" in str(m["Subject"]))
    match = LINK.search(text_of(mail))
    assert match, text_of(mail)
    return match.group(1)


# The backend itself -----------------------------------------------------------------------------


def test_objects_are_stored_listed_served_and_deleted(app: Flask, tmp_path: Path) -> None:
    storage = backend(app)
    store_bytes(app, "deliveries/j1/a.jpg", b"0123456789" * 1000)
    store_bytes(app, "previews/thumb/1.jpg", b"preview")
    assert storage.stat("deliveries/j1/a.jpg").size == 10_000  # type: ignore[union-attr]
    assert storage.stat("deliveries/j1/missing.jpg") is None
    assert _objects(app, "deliveries/") == {"deliveries/j1/a.jpg": 10_000}
    with storage.local_copy("previews/thumb/1.jpg") as copy:
        assert copy.read_bytes() == b"preview" and copy.parent == Path(app.config["WORK_DIR"])
    assert not copy.exists()
    url = storage.download_url("deliveries/j1/a.jpg", 60, filename="harbour-4x.jpg")
    assert url is not None
    ranged = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert (ranged.status_code, ranged.content) == (206, b"0123456789")
    assert 'filename="harbour-4x.jpg"' in ranged.headers["Content-Disposition"]
    assert storage.delete("deliveries/j1/a.jpg") == 10_000
    assert storage.delete("deliveries/j1/a.jpg") == 0
    assert _objects(app) == {"previews/thumb/1.jpg": 7}
    assert not Path(app.config["STORAGE_DIR"]).exists()


def test_keys_live_under_the_prefix(
    app_config: dict[str, Any], s3_server: LocalS3, s3_settings: dict[str, str]
) -> None:
    app_config["S3_PREFIX"] = "shop-one/"
    prefixed = create_app(app_config)
    with prefixed.app_context():
        store_bytes(prefixed, "originals/p/x.jpg", b"x")
        assert _objects(prefixed) == {"originals/p/x.jpg": 1}
    listed = s3_server.client().list_objects_v2(Bucket=s3_settings["S3_BUCKET"])
    assert [item["Key"] for item in listed["Contents"]] == ["shop-one/originals/p/x.jpg"]
    with prefixed.app_context():
        db.engine.dispose()


def test_the_catalog_and_previews_come_from_the_bucket(app: Flask, client: FlaskClient) -> None:
    attachment = make_attachment(app, width=1600, height=1000)
    db.session.commit()
    page = client.get(f"/images/{attachment.id}")
    assert page.status_code == 200
    preview = client.get(f"/images/{attachment.id}/preview/large.jpg")
    assert preview.status_code == 200 and preview.mimetype == "image/jpeg"
    assert (
        preview.data[:3] == b"\xff\xd8\xff" and "max-age=86400" in preview.headers["Cache-Control"]
    )
    assert f"previews/large/{attachment.id}.jpg" in _objects(app, "previews/")
    again = client.get(
        f"/images/{attachment.id}/preview/large.jpg",
        headers={"If-None-Match": preview.headers["ETag"]},
    )
    assert again.status_code == 304
    assert not Path(app.config["STORAGE_DIR"]).exists()


def test_a_preview_of_an_image_whose_original_is_gone_is_404(
    app: Flask, client: FlaskClient
) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    backend(app).delete(attachment.file_path)
    response = client.get(f"/images/{attachment.id}/preview/thumb.jpg")
    assert response.status_code == 404
    assert "find that page" in response.get_data(as_text=True)


def test_seeding_again_puts_back_demo_photos_missing_from_a_new_bucket(app: Flask) -> None:
    """Switching `make run` from a folder to a bucket keeps the database: the demo comes back."""
    from storefront.catalog.library import seed_demo

    assert seed_demo(app) == 5
    originals = _objects(app, "originals/")
    assert len(originals) == 5
    gone = sorted(originals)[0]
    backend(app).delete(gone)
    assert seed_demo(app) == 0
    assert _objects(app, "originals/") == originals


# Readiness -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"S3_BUCKET": "no-such-bucket-here"}, "bucket no-such-bucket-here does not exist"),
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "credentials refused"),
        ({"S3_ENDPOINT_URL": "http://127.0.0.1:1"}, "storage unreachable"),
    ],
)
def test_readyz_names_storage_when_the_bucket_cannot_be_used(
    app_config: dict[str, Any], change: dict[str, str], expected: str
) -> None:
    app_config.update(change)
    broken = create_app(app_config)
    response = broken.test_client().get("/readyz")
    with broken.app_context():
        db.engine.dispose()
    assert response.status_code == 503
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["storage"].startswith("down: ")
    assert expected in response.json["checks"]["storage"]
    assert change.get("AWS_SECRET_ACCESS_KEY", "\0") not in response.get_data(as_text=True)


@pytest.fixture
def unreachable(app_config: dict[str, Any]) -> None:
    """The test app with a storage endpoint where nothing listens (set before `app` is built)."""
    app_config["S3_ENDPOINT_URL"] = "http://127.0.0.1:1"


def test_a_download_link_answers_503_not_500_when_storage_is_unreachable(
    unreachable: None, app: Flask, client: FlaskClient
) -> None:
    from storefront.models import Attachment
    from tests.factories import make_post

    attachment = Attachment(
        post=make_post(),
        file_path="originals/x/y.jpg",
        original_filename="y.jpg",
        mime_type="image/jpeg",
        width=10,
        height=10,
        file_size=1,
        for_sale=True,
    )
    db.session.add(attachment)
    db.session.flush()
    job = make_job(
        attachment,
        status="completed",
        payment_status="paid",
        upscaled_file_path="deliveries/x/y.jpg",
        download_token=token_digest(TOKEN),
        download_expires_at=utcnow() + dt.timedelta(hours=1),
    )
    db.session.commit()
    response = client.get(f"/download/{TOKEN}")
    assert response.status_code == 503
    assert "storage" in response.get_data(as_text=True)
    assert response.headers["Retry-After"] == "60"
    assert fresh(job.job_id).download_count == 0


# The buyer's path, web and workers on separate folders ----------------------------------------


@pytest.mark.slow
def test_purchase_mail_and_download_through_a_presigned_url(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """The web app and two workers each have their own WORK_DIR and nothing in common."""
    folders = [tmp_path / "worker-1", tmp_path / "worker-2"]
    for folder in folders:
        start_worker(WORK_DIR=str(folder / "work"), STORAGE_DIR=str(folder / "storage"))
    job = _paid(live_app, stripe_local)
    url = _ready_link(smtp_sink)
    done = wait_until(lambda: (j := fresh(job.job_id)).email_sent and j, timeout=30)
    key = done.upscaled_file_path or ""
    assert key == f"deliveries/{job.job_id}/{done.post.slug}-{done.attachment_id}-4x.jpg"
    stored = _objects(live_app.app, "deliveries/")
    assert stored == {key: done.upscaled_file_size}

    file = requests.get(f"{url}/file", allow_redirects=False, timeout=10)
    assert file.status_code == 302 and file.headers["Cache-Control"] == "no-store"
    location = file.headers["Location"]
    assert location.startswith(live_app.app.config["S3_ENDPOINT_URL"])
    query = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)
    assert query["X-Amz-Expires"] == ["300"]
    assert TOKEN not in location and url.rsplit("/", 1)[-1] not in location
    assert fresh(job.job_id).download_count == 1

    whole = requests.get(location, timeout=10)
    assert whole.status_code == 200 and whole.headers["Content-Type"] == "image/jpeg"
    assert len(whole.content) == done.upscaled_file_size
    assert whole.headers["Content-Disposition"].startswith(
        f'attachment; filename="{done.post.slug}-{done.attachment_id}-4x.jpg"'
    )
    resumed = requests.get(location, headers={"Range": "bytes=100-"}, timeout=10)
    assert resumed.status_code == 206 and resumed.content == whole.content[100:]
    assert fresh(job.job_id).download_count == 1  # resumes on the bucket's URL cost nothing

    # Following the redirect as a browser does gives the same bytes.
    followed = requests.get(f"{url}/file", timeout=10)
    assert followed.status_code == 200 and followed.content == whole.content
    assert fresh(job.job_id).download_count == 2

    # Nobody wrote into a storage folder; every work folder is empty again.
    assert not Path(live_app.app.config["STORAGE_DIR"]).exists()
    worked = [folder for folder in folders if (folder / "work").exists()]
    assert len(worked) == 1  # the worker that took the order used its own WORK_DIR, and only it
    for folder in folders:
        assert not (folder / "storage").exists()
    assert list((worked[0] / "work").iterdir()) == []
    assert list(Path(live_app.app.config["WORK_DIR"]).iterdir()) == []


@pytest.mark.slow
def test_a_worker_that_cannot_upload_retries_then_fails_and_refunds(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
    s3_server: LocalS3,
) -> None:
    read_only = s3_server.read_only_keys
    start_worker(AWS_ACCESS_KEY_ID=read_only[0], AWS_SECRET_ACCESS_KEY=read_only[1])
    job = _paid(live_app, stripe_local)
    redis = redis_connection(live_app.app)
    scheduled = ScheduledJobRegistry(UPSCALE_QUEUE, connection=redis)

    def retried_or_failed() -> str | None:
        # RQ waits 10, 60 and 300 s between attempts: the test moves each retry up to now.
        for rq_id in scheduled.get_job_ids():
            scheduled.requeue(rq_id)
        status = fresh(job.job_id).status
        return status if status == "failed" else None

    wait_until(retried_or_failed, timeout=60, interval=0.5)
    failed = wait_until(lambda: (j := fresh(job.job_id)).payment_status == "refunded" and j)
    assert failed.error_message and "credentials refused" in failed.error_message
    assert failed.upscaled_file_path is None
    assert _objects(live_app.app, "deliveries/") == {}
    refunds = list(stripe_local.state.refunds.values())
    assert [refund["amount"] for refund in refunds] == [int(Decimal(failed.amount_charged) * 100)]
    assert smtp_sink.wait_for(1, timeout=20, where=lambda m: "refund" in str(m["Subject"]).lower())


@pytest.mark.slow
def test_upsampler_fetches_the_original_from_a_presigned_url(
    live_app: LiveApp,
    stripe_local: LocalStripe,
    upsampler: LocalUpsampler,
    smtp_sink: SinkHandler,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    start_worker(WORK_DIR=str(tmp_path / "worker-work"), STORAGE_DIR=str(tmp_path / "none"))
    job = _paid(live_app, stripe_local, width=80, height=60)
    done = wait_until(lambda: (j := fresh(job.job_id)).status == "completed" and j, timeout=40)
    (submission,) = upsampler.submissions()
    image_url = submission["body"]["input"]["imageUrl"]
    assert image_url.startswith(live_app.app.config["S3_ENDPOINT_URL"])
    assert "X-Amz-Expires=14400" in image_url  # four hours
    assert _objects(live_app.app, "deliveries/") == {
        done.upscaled_file_path: done.upscaled_file_size
    }
    assert _ready_link(smtp_sink)
    assert not (tmp_path / "none").exists()


# Cleanup on objects ----------------------------------------------------------------------------


def test_cleanup_removes_expired_files_orphans_and_unfinished_uploads(
    app: Flask, s3_server: LocalS3, s3_settings: dict[str, str]
) -> None:
    attachment = make_attachment(app)
    kept = completed_job(app, attachment)
    expired = completed_job(app, attachment, download_expires_at=utcnow() - dt.timedelta(days=5))
    store_bytes(app, "deliveries/no-such-job/left.jpg", b"orphan")
    client = s3_server.client()
    upload = client.create_multipart_upload(
        Bucket=s3_settings["S3_BUCKET"], Key=f"deliveries/{kept.job_id}/partial.jpg"
    )
    client.upload_part(
        Bucket=s3_settings["S3_BUCKET"],
        Key=f"deliveries/{kept.job_id}/partial.jpg",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"p" * 1024,
    )
    expired_key = expired.upscaled_file_path or ""
    assert expired_key in _objects(app)

    report = cleanup.cleanup_expired_files(dry_run=False)
    assert report.counts == {"files": 1}
    assert expired_key not in _objects(app) and fresh(expired.job_id).upscaled_file_path is None

    later = utcnow() + dt.timedelta(days=2)  # everything left is now older than a day
    dry = cleanup.remove_leftovers(dry_run=True, now=later)
    assert dry.counts == {"orphan files": 1, "unfinished uploads": 1}
    report = cleanup.remove_leftovers(dry_run=False, now=later)
    assert report.counts == dry.counts
    assert set(_objects(app)) == {attachment.file_path, kept.upscaled_file_path}
    uploads = client.list_multipart_uploads(Bucket=s3_settings["S3_BUCKET"])
    assert uploads.get("Uploads", []) == []


def test_the_admin_deletes_a_delivered_object(app: Flask) -> None:
    from storefront.jobs import actions

    job = completed_job(app)
    key = job.upscaled_file_path or ""
    assert key in _objects(app)
    assert actions.delete_file(job.job_id, "owner@shop.test") == "The delivered file is deleted."
    assert key not in _objects(app)
    assert fresh(job.job_id).upscaled_file_path is None
