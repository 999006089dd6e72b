"""Catalog management (posts, uploads, image details, removal) and the settings page."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from devservers.smtp_sink import SinkHandler
from storefront import create_app, settings
from storefront.catalog.library import ensure_preview
from storefront.extensions import db
from storefront.jobs.emails import deliver, sender
from storefront.models import AdminAction, AppSetting, Attachment, Post
from tests import admin_helpers
from tests.admin_helpers import completed_job, fresh, text
from tests.factories import make_attachment, make_job, make_post, resolve, write_test_image

admin_user = admin_helpers.admin_user
admin_client = admin_helpers.admin_client


def _audit(action: str) -> list[AdminAction]:
    return list(db.session.scalars(select(AdminAction).where(AdminAction.action == action)))


# Posts ----------------------------------------------------------------------------------------


def test_create_and_edit_a_post(admin_client: FlaskClient) -> None:
    response = admin_client.post(
        "/admin/catalog/posts/new", data={"title": "Trip to Lisbon!", "slug": "", "body": "Tiles."}
    )
    assert response.status_code == 303
    post = db.session.scalars(select(Post)).one()
    assert (post.slug, post.title, post.body) == ("trip-to-lisbon", "Trip to Lisbon!", "Tiles.")
    assert response.headers["Location"] == f"/admin/catalog/posts/{post.id}"
    edited = admin_client.post(
        f"/admin/catalog/posts/{post.id}", data={"title": "Lisbon", "slug": "lisbon", "body": ""}
    )
    assert edited.status_code == 303
    db.session.expire_all()
    assert (post.slug, post.title) == ("lisbon", "Lisbon")
    assert [a.admin for a in _audit("post_changed")] == [admin_helpers.ADMIN_NAME]
    assert admin_client.get("/posts/lisbon").status_code == 200


def test_post_slug_must_be_unused_and_well_formed(admin_client: FlaskClient) -> None:
    make_post(slug="taken", title="Taken")
    db.session.commit()
    clash = admin_client.post("/admin/catalog/posts/new", data={"title": "New", "slug": "taken"})
    assert clash.status_code == 400
    assert "The slug 'taken' is used by another post" in text(clash)
    bad = admin_client.post("/admin/catalog/posts/new", data={"title": "New", "slug": "Not OK!"})
    assert bad.status_code == 400
    assert "lowercase letters, digits and dashes" in text(bad)
    assert db.session.scalars(select(Post)).all() == [db.session.scalars(select(Post)).one()]


# Uploads ------------------------------------------------------------------------------------


def _image_bytes(
    tmp_path: Path, name: str = "harbour.jpg", size: tuple[int, int] = (320, 200)
) -> bytes:
    return write_test_image(tmp_path / name, *size).read_bytes()


def _upload(client: FlaskClient, post: Post, content: bytes, filename: str, **fields: Any) -> Any:
    data = {"title": "Harbour", "alt_text": "Boats in a harbour at dawn", "for_sale": "y"} | fields
    data["image"] = (io.BytesIO(content), filename)
    return client.post(
        f"/admin/catalog/posts/{post.id}/images", data=data, content_type="multipart/form-data"
    )


def test_upload_checks_the_image_and_stores_it_like_the_demo_ones(
    app: Flask, admin_client: FlaskClient, tmp_path: Path
) -> None:
    post = make_post(slug="harbours")
    db.session.commit()
    content = _image_bytes(tmp_path)
    response = _upload(admin_client, post, content, "My Harbour.JPG")
    assert response.status_code == 303, text(response)
    attachment = db.session.scalars(select(Attachment)).one()
    assert (attachment.width, attachment.height, attachment.mime_type) == (320, 200, "image/jpeg")
    assert attachment.file_path == "originals/harbours/My-Harbour.jpg"
    assert attachment.original_filename == "My Harbour.JPG"
    assert attachment.alt_text == "Boats in a harbour at dawn" and attachment.for_sale
    assert resolve(app, attachment.file_path).read_bytes() == content
    assert attachment.file_size == len(content)
    # The same name again gets a file of its own.
    assert _upload(admin_client, post, content, "My Harbour.JPG").status_code == 303
    paths = [a.file_path for a in db.session.scalars(select(Attachment).order_by(Attachment.id))]
    assert paths == ["originals/harbours/My-Harbour.jpg", "originals/harbours/My-Harbour-2.jpg"]
    assert admin_client.get(f"/images/{attachment.id}").status_code == 200
    assert len(_audit("image_uploaded")) == 2


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("notes.txt", b"hello", "Upload a JPEG, PNG or WebP image"),
        ("fake.jpg", b"this is not an image at all", "not an image we can read"),
        ("empty.png", b"", "The file is empty"),
    ],
)
def test_upload_refuses_what_is_not_an_image(
    app: Flask, admin_client: FlaskClient, filename: str, content: bytes, message: str
) -> None:
    post = make_post()
    db.session.commit()
    response = _upload(admin_client, post, content, filename)
    assert response.status_code == 400
    assert message in text(response)
    assert db.session.scalars(select(Attachment)).all() == []
    assert not (resolve(app, "originals") / post.slug).exists() or not any(
        (resolve(app, "originals") / post.slug).iterdir()
    )


def test_upload_refuses_a_type_mismatch_and_a_large_file(
    app: Flask, admin_client: FlaskClient, tmp_path: Path
) -> None:
    post = make_post()
    db.session.commit()
    png = write_test_image(tmp_path / "real.png", 50, 40, fmt="png").read_bytes()
    mismatch = _upload(admin_client, post, png, "pretend.jpg")
    assert mismatch.status_code == 400
    assert "its content is image/png" in text(mismatch)
    app.config["ADMIN_UPLOAD_MAX_BYTES"] = 100_000
    large = _upload(admin_client, post, b"\xff" * 100_001, "big.jpg")
    assert large.status_code == 400
    assert "larger than 100.0 KB" in text(large)
    assert db.session.scalars(select(Attachment)).all() == []


def test_edit_an_image_alt_text_and_sale(app: Flask, admin_client: FlaskClient) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    response = admin_client.post(
        f"/admin/catalog/images/{attachment.id}",
        data={"title": "Dusk", "alt_text": "A lighthouse at dusk"},
    )
    assert response.status_code == 303
    db.session.expire_all()
    assert (attachment.title, attachment.alt_text, attachment.for_sale) == (
        "Dusk",
        "A lighthouse at dusk",
        False,
    )
    assert "not for sale" in _audit("image_changed")[0].detail
    missing_alt = admin_client.post(
        f"/admin/catalog/images/{attachment.id}", data={"title": "x", "alt_text": ""}
    )
    assert missing_alt.status_code == 400
    assert "Describe the image in the alt text" in text(missing_alt)


# Removal ------------------------------------------------------------------------------------


def test_remove_an_image_no_paid_job_needs(app: Flask, admin_client: FlaskClient) -> None:
    attachment = make_attachment(app)
    delivered = completed_job(app, attachment)
    db.session.commit()
    original = resolve(app, attachment.file_path)
    preview = resolve(app, ensure_preview(app, attachment, "thumb").key)
    response = admin_client.post(
        f"/admin/catalog/images/{attachment.id}/remove", data={"confirm": "yes"}
    )
    assert response.status_code == 303
    assert db.session.get(Attachment, attachment.id) is None
    assert not original.exists() and not preview.exists()
    kept = fresh(delivered.job_id)
    assert kept.attachment_id is None and kept.upscaled_file_path  # the buyer keeps the file
    assert admin_client.get(f"/images/{attachment.id}").status_code == 404


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "pending", "payment_status": "paid"},
        {"status": "processing", "payment_status": "paid"},
        {"status": "failed", "payment_status": "paid"},
    ],
)
def test_an_image_a_paid_job_needs_is_not_removed(
    app: Flask, admin_client: FlaskClient, fields: dict[str, str]
) -> None:
    attachment = make_attachment(app)
    job = make_job(attachment, **fields)
    db.session.commit()
    page = text(admin_client.get(f"/admin/catalog/images/{attachment.id}"))
    assert "A paid job still needs this image" in page
    response = admin_client.post(
        f"/admin/catalog/images/{attachment.id}/remove", data={"confirm": "yes"}
    )
    assert response.status_code == 409
    assert f"(job {job.job_id})" in text(response)
    db.session.expire_all()
    assert db.session.get(Attachment, attachment.id) is not None
    assert resolve(app, attachment.file_path).is_file()
    assert fresh(job.job_id).attachment_id == attachment.id


def test_removal_needs_the_confirmation(app: Flask, admin_client: FlaskClient) -> None:
    attachment = make_attachment(app)
    db.session.commit()
    assert admin_client.post(f"/admin/catalog/images/{attachment.id}/remove").status_code == 400
    assert db.session.get(Attachment, attachment.id) is not None


# Settings -----------------------------------------------------------------------------------


def _form(**changes: str) -> dict[str, Any]:
    """The settings form as the page submits it, at the defaults, with `changes`."""
    values: dict[str, Any] = {
        "MARKUP_PERCENT": "200",
        "COST_PER_CREDIT": "0.04",
        "CREDITS_PER_MEGAPIXEL": "0.25",
        "MIN_PRICE": "0.50",
        "RESOLUTIONS": ["4x", "8x"],
        "MAX_OUTPUT_MEGAPIXELS": "400",
        "DOWNLOAD_EXPIRY_HOURS": "24",
        "DOWNLOAD_MAX_COUNT": "10",
        "CLEANUP_GRACE_HOURS": "48",
        "ARCHIVE_AFTER_DAYS": "365",
        "MAIL_SENDER_NAME": "Sell My Images",
    }
    values.update(changes)
    return values


def test_settings_page_lists_values_and_defaults(admin_client: FlaskClient) -> None:
    page = text(admin_client.get("/admin/settings"))
    for label in (
        "Markup",
        "Link life",
        "Downloads per link",
        "Keep expired files for",
        "Sender name",
    ):
        assert label in page
    assert "Allowed: 0–1200 %" in page and "Allowed: 1–168 hours" in page


def test_a_saved_setting_overrides_the_environment_and_is_logged(
    app: Flask, admin_client: FlaskClient
) -> None:
    attachment = make_attachment(app, width=1500, height=1500)
    db.session.commit()
    assert "$1.08" in text(admin_client.get(f"/images/{attachment.id}"))
    response = admin_client.post(
        "/admin/settings", data=_form(MARKUP_PERCENT="100", DOWNLOAD_EXPIRY_HOURS="48")
    )
    assert response.status_code == 303
    rows = {row.name: row for row in db.session.scalars(select(AppSetting))}
    assert set(rows) == {"MARKUP_PERCENT", "DOWNLOAD_EXPIRY_HOURS"}
    assert rows["MARKUP_PERCENT"].updated_by == admin_helpers.ADMIN_NAME
    assert settings.get("MARKUP_PERCENT") == Decimal("100")
    assert settings.get("DOWNLOAD_EXPIRY_HOURS") == 48
    assert app.config["MARKUP_PERCENT"] == Decimal("200")  # the configuration never changes
    assert "$0.72" in text(admin_client.get(f"/images/{attachment.id}"))
    changes = {a.target: a.detail for a in _audit("setting_changed")}
    assert changes == {"MARKUP_PERCENT": "200 → 100", "DOWNLOAD_EXPIRY_HOURS": "24 → 48"}
    assert "Set here by Olive Owner" in text(admin_client.get("/admin/settings"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"MARKUP_PERCENT": "1300"}, "Markup: enter a number from 0 to 1200 %"),
        ({"MARKUP_PERCENT": "lots"}, "Markup: enter a number from 0 to 1200 %"),
        ({"DOWNLOAD_EXPIRY_HOURS": "200"}, "Link life: enter a number from 1 to 168 hours"),
        ({"DOWNLOAD_EXPIRY_HOURS": "1.5"}, "Link life: enter a number from 1 to 168 hours"),
        ({"MIN_PRICE": "0.10"}, "Minimum price: enter a number from 0.50 to 10000"),
        ({"RESOLUTIONS": []}, "Resolutions offered: expected a comma-separated subset"),
        ({"MAIL_SENDER_NAME": "Evil <x@y>"}, "Sender name: a name of 1 to 100 characters"),
    ],
)
def test_an_invalid_value_saves_nothing(
    app: Flask, admin_client: FlaskClient, changes: dict[str, Any], message: str
) -> None:
    response = admin_client.post("/admin/settings", data=_form(DOWNLOAD_MAX_COUNT="3", **changes))
    assert response.status_code == 400
    assert message in text(response)
    assert "Nothing was saved" in text(response)
    assert db.session.scalars(select(AppSetting)).all() == []
    assert settings.get("DOWNLOAD_MAX_COUNT") == 10
    assert _audit("setting_changed") == []


def test_reset_brings_back_the_environment_value(app: Flask, admin_client: FlaskClient) -> None:
    admin_client.post(
        "/admin/settings", data=_form(DOWNLOAD_MAX_COUNT="3", MAIL_SENDER_NAME="Ana's Prints")
    )
    assert settings.get("DOWNLOAD_MAX_COUNT") == 3
    assert sender() == "Ana's Prints <shop@localhost>"
    response = admin_client.post(
        "/admin/settings",
        data=_form(DOWNLOAD_MAX_COUNT="3", MAIL_SENDER_NAME="Ana's Prints")
        | {"reset": ["DOWNLOAD_MAX_COUNT", "MAIL_SENDER_NAME"]},
    )
    assert response.status_code == 303
    assert db.session.scalars(select(AppSetting)).all() == []
    assert settings.get("DOWNLOAD_MAX_COUNT") == 10
    assert sender() == "Sell My Images <shop@localhost>"
    assert len(_audit("setting_reset")) == 2


def test_emails_come_from_the_sender_name_saved_in_the_admin(
    app: Flask, admin_client: FlaskClient, smtp_sink: SinkHandler
) -> None:
    job = completed_job(app)
    admin_client.post("/admin/settings", data=_form(MAIL_SENDER_NAME="Ana's Prints"))
    assert deliver("paid", job.job_id) == "sent"
    (message,) = smtp_sink.wait_for(1)
    assert message["From"] == "Ana's Prints <shop@localhost>"


def test_other_processes_pick_up_a_change_and_only_reload_when_it_changed(
    app: Flask, app_config: dict[str, Any], admin_client: FlaskClient
) -> None:
    other = create_app({**app_config, "MARKUP_PERCENT": "300"})
    with other.app_context():
        assert settings.refresh(other) is True  # first look
        assert settings.refresh(other) is False  # nothing changed since
        assert settings.get("MARKUP_PERCENT", other) == Decimal("300")
    admin_client.post("/admin/settings", data=_form(MARKUP_PERCENT="150"))
    with other.app_context():
        assert settings.refresh(other) is True  # what a task does at its start
        assert settings.get("MARKUP_PERCENT", other) == Decimal("150")
        assert other.config["MARKUP_PERCENT"] == Decimal("300")
    admin_client.post("/admin/settings", data=_form() | {"reset": ["MARKUP_PERCENT"]})
    with other.app_context():
        assert settings.refresh(other) is True
        assert settings.get("MARKUP_PERCENT", other) == Decimal("300")  # its environment's value
        db.session.remove()
        db.engine.dispose()


def test_catalog_and_audit_pages_show_what_was_done(app: Flask, admin_client: FlaskClient) -> None:
    attachment = make_attachment(app, title="Lighthouse")
    db.session.commit()
    catalog = text(admin_client.get("/admin/catalog"))
    assert "Lighthouse" in catalog and f"/admin/catalog/images/{attachment.id}" in catalog
    assert admin_client.get("/admin/catalog/posts/new").status_code == 200
    assert admin_client.get(f"/admin/catalog/posts/{attachment.post_id}").status_code == 200
    admin_client.post("/admin/settings", data=_form(DOWNLOAD_MAX_COUNT="5"))
    audit = text(admin_client.get("/admin/audit"))
    assert "setting_changed" in audit and "10 → 5" in audit and admin_helpers.ADMIN_NAME in audit
