"""The app starts, seeds its demo catalog, reports its health and shows friendly errors."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import func, select

from storefront import create_app
from storefront.catalog.library import DEMO_POSTS
from storefront.config import SETTINGS, ConfigError, environment, load_settings
from storefront.extensions import db
from storefront.models import Attachment, Post
from tests.factories import make_attachment


def test_seed_demo_creates_posts_with_real_image_sizes(runner: FlaskCliRunner, app: Flask) -> None:
    result = runner.invoke(args=["smi", "seed-demo"])
    assert result.exit_code == 0, result.output
    assert "Demo catalog created: 5 images." in result.output
    assert db.session.scalar(select(func.count(Post.id))) == len(DEMO_POSTS)
    sizes = {
        a.original_filename: (a.width, a.height) for a in db.session.scalars(select(Attachment))
    }
    assert sizes == {
        "astronaut.png": (512, 512),
        "chelsea.png": (451, 300),
        "coffee.png": (600, 400),
        "rocket.jpg": (640, 427),
        "hubble_deep_field.jpg": (1000, 872),
    }


def test_seed_demo_does_nothing_when_catalog_has_content(
    runner: FlaskCliRunner, app: Flask
) -> None:
    runner.invoke(args=["smi", "seed-demo"])
    again = runner.invoke(args=["smi", "seed-demo"])
    assert "already has content" in again.output
    assert db.session.scalar(select(func.count(Attachment.id))) == 5


def test_catalog_lists_demo_images_with_previews(
    runner: FlaskCliRunner, client: FlaskClient
) -> None:
    runner.invoke(args=["smi", "seed-demo"])
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Chelsea the cat" in html and "Hubble eXtreme Deep Field" in html
    assert html.count("Download Hi-Res</a>") == 5
    attachment = db.session.scalars(select(Attachment)).first()
    assert attachment is not None
    with client.get(f"/images/{attachment.id}/preview/thumb.jpg") as preview:
        assert preview.status_code == 200
        assert preview.mimetype == "image/jpeg" and preview.data[:2] == b"\xff\xd8"


def test_post_page_shows_its_images(runner: FlaskCliRunner, client: FlaskClient) -> None:
    runner.invoke(args=["smi", "seed-demo"])
    html = client.get("/posts/everyday").get_data(as_text=True)
    assert "Everyday moments" in html and "Coffee" in html and "Rocket" not in html


def test_healthz_answers(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_readyz_reports_database_redis_and_storage(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = {"database": "ok", "redis": "ok", "storage": "ok"}
    assert response.json == {"status": "ready", "checks": checks}


def test_readyz_is_503_naming_redis_when_it_is_down(app_config: dict) -> None:
    from storefront import create_app

    app_config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    down = create_app(app_config)
    response = down.test_client().get("/readyz")
    with down.app_context():
        db.engine.dispose()
    assert response.status_code == 503
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["redis"].startswith("down")


def test_unknown_page_is_a_friendly_404(client: FlaskClient) -> None:
    response = client.get("/posts/no-such-post")
    assert response.status_code == 404
    html = response.get_data(as_text=True)
    assert "find that page" in html and "Back to the catalog" in html
    assert "Traceback" not in html


def test_unknown_image_is_404(client: FlaskClient) -> None:
    assert client.get("/images/999999").status_code == 404
    assert client.get("/images/999999/preview/thumb.jpg").status_code == 404


def test_unhandled_error_is_a_500_page_and_rolls_back(app: Flask, client: FlaskClient) -> None:
    attachment = make_attachment(app)
    db.session.commit()

    @app.get("/boom")
    def boom() -> str:
        attachment.title = "half-written"
        db.session.flush()
        raise RuntimeError("kaboom")

    app.config["TESTING"] = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.get("/boom")
    assert response.status_code == 500
    assert "Something went wrong on our side" in response.get_data(as_text=True)
    assert "kaboom" not in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Attachment, attachment.id).title != "half-written"


def test_secrets_are_required_outside_development(tmp_path) -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_settings(tmp_path, environ={"SMI_ENV": "production"})


def test_environment_overrides_defaults_and_ranges_are_checked(tmp_path) -> None:
    settings = load_settings(tmp_path, environ={"MARKUP_PERCENT": "150", "CURRENCY": "EUR"})
    assert str(settings["MARKUP_PERCENT"]) == "150" and settings["CURRENCY"] == "eur"
    with pytest.raises(ConfigError, match="DOWNLOAD_EXPIRY_HOURS"):
        load_settings(tmp_path, environ={"DOWNLOAD_EXPIRY_HOURS": "500"})


def test_a_test_app_takes_only_its_own_configuration(
    app_config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A developer's environment (or .env) must not leak into an app built with a mapping.
    monkeypatch.setenv("MARKUP_PERCENT", "999")
    monkeypatch.setenv("DOWNLOAD_MAX_COUNT", "77")
    built = create_app(app_config)
    assert built.config["MARKUP_PERCENT"] == Decimal("200")
    assert built.config["DOWNLOAD_MAX_COUNT"] == 10
    assert load_settings(".", environ=environment())["DOWNLOAD_MAX_COUNT"] == 77


def test_every_setting_is_declared_once_with_a_valid_default(tmp_path) -> None:
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names))
    defaults = load_settings(tmp_path, environ={})
    assert set(names) <= set(defaults)
    assert defaults["MAIL_SENDER_NAME"] == "Sell My Images"
    assert defaults["ARCHIVE_DIR"] == str(tmp_path / "archives")
    with pytest.raises(ConfigError, match="MAINTENANCE_AT"):
        load_settings(tmp_path, environ={"MAINTENANCE_AT": "25:00"})


def test_image_page_shows_both_resolutions_with_sizes(
    runner: FlaskCliRunner, client: FlaskClient
) -> None:
    runner.invoke(args=["smi", "seed-demo"])
    query = select(Attachment).where(Attachment.original_filename == "coffee.png")
    coffee = db.session.scalar(query)
    assert coffee is not None
    html = client.get(f"/images/{coffee.id}").get_data(as_text=True)
    assert "2400 × 1600 px" in html and "4800 × 3200 px" in html
    checked = re.findall(r'<input type="radio"[^>]*?value="(\dx)"[^>]*?\schecked', html)
    assert checked == ["4x"]


def test_absurd_ids_are_not_found_rather_than_errors(client: FlaskClient) -> None:
    huge = "9" * 30
    assert client.get(f"/images/{huge}").status_code == 404
    assert client.get(f"/images/{huge}/preview/thumb.jpg").status_code == 404
    response = client.post("/checkout", data={"attachment_id": huge, "resolution": "4x"})
    assert response.status_code == 400
