"""Which engine upscales a tier, honestly shown on the image page, with the neural time guard."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from devservers.stripe_local import LocalStripe
from storefront.extensions import db
from storefront.jobs.estimates import engine_for, neural_seconds
from storefront.models import Job
from tests.factories import make_attachment


def test_estimate_grows_with_the_input_and_the_factor() -> None:
    small, large = neural_seconds(500, 500, 4), neural_seconds(2000, 2000, 4)
    assert 1 < small < large
    assert neural_seconds(1000, 750, 4) < 10  # 1 MP at 4x: about 4 s measured (one pass)


def test_tiers_within_the_guard_use_neural_and_others_the_configured_path(app: Flask) -> None:
    app.config.update(UPSCALER="neural", NEURAL_MAX_MINUTES=1, NEURAL_OVER_LIMIT="local")
    assert neural_seconds(300, 200, 4) < 60 < neural_seconds(4000, 4000, 4)
    assert engine_for(300, 200, 4, app.config) == "neural"
    assert engine_for(3000, 2000, 4, app.config) == "neural"  # 6 MP at 4x is one network pass
    assert engine_for(4000, 4000, 4, app.config) == "local"
    app.config["NEURAL_OVER_LIMIT"] = "unavailable"
    assert engine_for(4000, 4000, 4, app.config) is None
    app.config["UPSCALER"] = "local"
    assert engine_for(4000, 4000, 4, app.config) == "local"


def test_image_page_says_which_engine_each_tier_uses(app: Flask, client: FlaskClient) -> None:
    app.config.update(UPSCALER="neural", NEURAL_MAX_MINUTES=1, NEURAL_OVER_LIMIT="local")
    attachment = make_attachment(app, width=1800, height=1450)
    assert neural_seconds(1800, 1450, 4) < 60 < neural_seconds(1800, 1450, 8)
    db.session.commit()
    html = client.get(f"/images/{attachment.id}").get_data(as_text=True)
    assert html.count("AI upscaling (neural network") == 1
    assert html.count("High-quality Lanczos resampling") == 1


def test_tier_over_the_guard_can_be_shown_unavailable_and_is_refused(
    app: Flask, client: FlaskClient, stripe_local: LocalStripe
) -> None:
    app.config.update(UPSCALER="neural", NEURAL_MAX_MINUTES=1, NEURAL_OVER_LIMIT="unavailable")
    attachment = make_attachment(app, width=1800, height=1450)
    assert neural_seconds(1800, 1450, 4) < 60 < neural_seconds(1800, 1450, 8)
    db.session.commit()
    html = client.get(f"/images/{attachment.id}").get_data(as_text=True)
    assert "Too large for AI upscaling here" in html
    response = client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "8x"})
    assert response.status_code == 400
    assert db.session.scalars(select(Job)).all() == []
    ok = client.post("/checkout", data={"attachment_id": attachment.id, "resolution": "4x"})
    assert ok.status_code == 303
