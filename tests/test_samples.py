"""Before/after samples: the region shown, the worker that makes them, the URLs and the page."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
import pyvips
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from PIL import Image
from rq import Queue
from sqlalchemy import select

from storefront import create_app
from storefront.extensions import db
from storefront.jobs.samples import region_size
from storefront.models import AdminAction, Attachment, ImageSample
from storefront.queues import SAMPLES_QUEUE, redis_connection
from storefront.storage import backend
from tests import admin_helpers
from tests.conftest import LiveApp, WorkerProcess, wait_until
from tests.factories import make_attachment
from worker.samples import Region, choose_region, make_sample

WIDTH, HEIGHT = 1600, 1200
PATCH = (1100, 200, 200, 200)  # left, top, width, height of the one textured area


def _flat_with_textured_patch() -> pyvips.Image:
    """A flat grey picture with one square of fine noise: the only detail in it."""
    flat = pyvips.Image.black(WIDTH, HEIGHT) + 128
    left, top, width, height = PATCH
    noise = pyvips.Image.gaussnoise(width, height, sigma=60, mean=128)
    return flat.insert(noise, left, top).cast("uchar").copy(interpretation="b-w")


def _overview(image: pyvips.Image) -> pyvips.Image:
    return image.resize(512 / max(image.width, image.height))


def _inside(region: Region, width: int, height: int) -> bool:
    return (
        region.left >= 0
        and region.top >= 0
        and region.left + region.width <= width
        and region.top + region.height <= height
    )


def test_the_region_lands_on_the_textured_area() -> None:
    image = _flat_with_textured_patch()
    size = region_size(WIDTH, HEIGHT, 4)
    assert size == (256, 256)
    region = choose_region(_overview(image), (WIDTH, HEIGHT), size)
    left, top, width, height = PATCH
    # The 256-pixel region holds the whole 200-pixel patch (give or take the overview's scale).
    assert region.left <= left + 4 and region.left + region.width >= left + width - 4
    assert region.top <= top + 4 and region.top + region.height >= top + height - 4
    assert (region.width, region.height) == size


def test_the_owners_focus_point_wins() -> None:
    image = _flat_with_textured_patch()
    region = choose_region(_overview(image), (WIDTH, HEIGHT), (256, 256), focus=(0.1, 0.5))
    assert region == Region(160 - 128, 600 - 128, 256, 256)


@pytest.mark.parametrize(
    ("width", "height"), [(1600, 1200), (5000, 300), (300, 5000), (640, 480), (9, 4), (4, 4)]
)
@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("focus", [None, (0.0, 0.0), (1.0, 1.0), (0.99, 0.01)])
def test_a_region_is_at_most_a_sixteenth_and_inside_the_image(
    width: int, height: int, factor: int, focus: tuple[float, float] | None
) -> None:
    size = region_size(width, height, factor)
    assert 16 * size[0] * size[1] <= width * height
    assert max(size) * factor <= 1024
    overview = pyvips.Image.gaussnoise(min(width, 512), min(height, 512)).cast("uchar")
    region = choose_region(overview, (width, height), size, focus)
    assert (region.width, region.height) == size
    assert _inside(region, width, height)


def _samples_of(attachment_id: int) -> list[ImageSample]:
    db.session.rollback()  # a fresh transaction sees what the worker committed
    return list(
        db.session.scalars(
            select(ImageSample)
            .where(ImageSample.attachment_id == attachment_id)
            .order_by(ImageSample.engine, ImageSample.resolution)
        )
    )


def _get(client: FlaskClient, url: str) -> tuple[int, str, bytes]:
    """The status, type and body of a GET (the response closed: a file body holds its file)."""
    with client.get(url) as response:
        return response.status_code, response.mimetype or "", response.data


def _jpeg_size(client: FlaskClient, url: str) -> tuple[int, int]:
    status, mimetype, body = _get(client, url)
    assert (status, mimetype) == (200, "image/jpeg"), url
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "JPEG"
        return image.size


# At 4x the region is 256 x 225 source pixels (225 = 900 / 4), at 8x 128 x 128.
EXPECTED_SIZES = {"4x": (1024, 900), "8x": (1024, 1024)}


def _check_served(client: FlaskClient, attachment_id: int) -> None:
    base = f"/images/{attachment_id}/samples"
    for resolution, size in EXPECTED_SIZES.items():
        assert _jpeg_size(client, f"{base}/{resolution}.jpg") == size
        assert _jpeg_size(client, f"{base}/{resolution}-plain.jpg") == size
        assert (
            _get(client, f"{base}/{resolution}.jpg")[2]
            != (_get(client, f"{base}/{resolution}-plain.jpg")[2])
        )


def test_a_worker_makes_the_samples_again_when_the_image_or_the_engine_changes(
    app: Flask,
    app_config: dict[str, object],
    client: FlaskClient,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    attachment = make_attachment(app, width=1200, height=900, title="Harbour")
    db.session.commit()
    image_id = attachment.id
    base = f"/images/{image_id}/samples"
    for name in ("4x", "4x-plain", "8x", "8x-plain"):
        assert _get(client, f"{base}/{name}.jpg")[0] == 404
    assert _get(client, f"{base}/2x.jpg")[0] == 404
    assert _get(client, f"{base}/4x-other.jpg")[0] == 404

    page = client.get(f"/images/{image_id}").get_data(as_text=True)
    assert page.count("preparing a sample") == 2
    assert "/samples/4x.jpg" not in page
    queued = Queue(SAMPLES_QUEUE, connection=redis_connection(app)).job_ids
    assert sorted(queued) == [f"sample-{image_id}-4x", f"sample-{image_id}-8x"]

    worker = start_worker()
    made = wait_until(lambda: len(rows := _samples_of(image_id)) == 2 and rows, timeout=60)
    assert [(row.resolution, row.engine) for row in made] == [("4x", "local"), ("8x", "local")]
    _check_served(client, image_id)
    page = client.get(f"/images/{image_id}").get_data(as_text=True)
    assert "preparing a sample" not in page
    assert "Detail of Harbour enlarged 4x plainly" in page
    assert re.search(r'<input type="range" id="sample-slider-8x"', page)

    # The owner picks a focus point: the image's samples are made again, there.
    stored = backend(app)
    old_keys = [key for row in made for key in (row.engine_key, row.plain_key)]
    assert all(stored.stat(key) is not None for key in old_keys)
    db.session.get(Attachment, image_id).focus_x = 0.0  # type: ignore[union-attr]
    db.session.get(Attachment, image_id).focus_y = 1.0  # type: ignore[union-attr]
    db.session.commit()
    assert _get(client, f"{base}/4x.jpg")[0] == 404
    assert client.get(f"/images/{image_id}").get_data(as_text=True).count("preparing a sample") == 2

    def remade_at_the_focus() -> list[ImageSample]:
        rows = _samples_of(image_id)
        return rows if all(row.region_left == 0 for row in rows) else []

    remade = wait_until(remade_at_the_focus, timeout=60)
    assert [(row.region_left, row.region_top) for row in remade] == [(0, 900 - 225), (0, 900 - 128)]
    assert all(stored.stat(key) is None for key in old_keys)
    _check_served(client, image_id)

    # The engine changes (the web app and the workers restarted with UPSCALER=neural).
    worker.kill()
    neural_app = create_app({**app_config, "UPSCALER": "neural"})
    with neural_app.app_context():
        neural_client = neural_app.test_client()
        page = neural_client.get(f"/images/{image_id}").get_data(as_text=True)
        assert page.count("preparing a sample") == 2
        assert _get(neural_client, f"{base}/4x.jpg")[0] == 404
        start_worker(UPSCALER="neural")
        wait_until(lambda: len(_samples_of(image_id)) == 4, timeout=120)
        _check_served(neural_client, image_id)
        assert "AI upscaling (neural network" in neural_client.get(f"/images/{image_id}").get_data(
            as_text=True
        )
        neural_seconds = [row.seconds for row in _samples_of(image_id) if row.engine == "neural"]
        assert all(seconds > 0 for seconds in neural_seconds)
        db.session.remove()


@pytest.mark.browser
@pytest.mark.slow
def test_the_comparison_shows_and_its_slider_moves_with_the_keyboard(
    live_app: LiveApp,
    start_worker: Callable[..., WorkerProcess],
    new_browser_page: Callable[..., Any],
) -> None:
    attachment = make_attachment(live_app.app, width=1200, height=900, title="Quay")
    db.session.commit()
    image_url = f"{live_app.url}/images/{attachment.id}"
    page = new_browser_page(1280, 900)
    page.goto(image_url)
    assert page.get_by_text("4x: preparing a sample").is_visible()
    assert page.locator(".samples img").count() == 0  # no broken image while it is made

    start_worker()
    wait_until(lambda: len(_samples_of(attachment.id)) == 2, timeout=60)
    page.goto(image_url)
    plain = page.get_by_role("img", name="Detail of Quay enlarged 4x plainly, as a browser would")
    upscaled = page.get_by_role("img", name=re.compile(r"^The same detail upscaled 4x"))
    for image in (plain, upscaled):
        image.scroll_into_view_if_needed()
        assert image.evaluate("img => img.complete && img.naturalWidth") == 1024
    # With the script, one picture: the upscale over the plain one, cut at the slider.
    assert plain.bounding_box() == upscaled.bounding_box()
    slider = page.get_by_label("Compare at 4x: plain on the left, upscaled on the right")
    clip = "img => getComputedStyle(img).clipPath"
    assert upscaled.evaluate(clip) == "inset(0px 0px 0px 50%)"
    slider.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert slider.input_value() == "60"
    assert upscaled.evaluate(clip) == "inset(0px 0px 0px 60%)"
    page.keyboard.press("Home")
    assert upscaled.evaluate(clip) == "inset(0px 0px 0px 0%)"

    # Without JavaScript both images stand side by side, and no slider is offered.
    still = new_browser_page(1280, 900, java_script_enabled=False)
    still.goto(image_url)
    left = still.get_by_role("img", name="Detail of Quay enlarged 8x plainly, as a browser would")
    right = still.get_by_role("img", name=re.compile(r"^The same detail upscaled 8x"))
    right.scroll_into_view_if_needed()
    assert left.is_visible() and right.is_visible()
    left_box, right_box = left.bounding_box(), right.bounding_box()
    assert left_box["x"] + left_box["width"] <= right_box["x"]
    assert left_box["y"] == right_box["y"]
    assert not still.get_by_label(
        "Compare at 8x: plain on the left, upscaled on the right"
    ).is_visible()


def test_queue_samples_queues_each_missing_sample_once(app: Flask, runner: FlaskCliRunner) -> None:
    shown = make_attachment(app, width=400, height=300)
    make_attachment(app, width=400, height=300, for_sale=False)
    db.session.commit()
    result = runner.invoke(args=["smi", "queue-samples"])
    assert "Before/after samples queued: 2." in result.output
    queued = Queue(SAMPLES_QUEUE, connection=redis_connection(app)).job_ids
    assert sorted(queued) == [f"sample-{shown.id}-4x", f"sample-{shown.id}-8x"]
    again = runner.invoke(args=["smi", "queue-samples"])
    assert "Before/after samples queued: 0." in again.output


admin_user = admin_helpers.admin_user
admin_client = admin_helpers.admin_client


def test_the_owner_sets_a_focus_point_and_the_samples_are_queued(
    app: Flask, admin_client: FlaskClient
) -> None:
    attachment = make_attachment(app, width=800, height=600)
    db.session.commit()
    url = f"/admin/catalog/images/{attachment.id}"
    form = {"title": "Pier", "alt_text": "A pier", "for_sale": "y"}
    response = admin_client.post(url, data={**form, "focus_x": "0.25", "focus_y": "0.75"})
    assert response.status_code == 303
    db.session.expire_all()
    assert (attachment.focus_x, attachment.focus_y) == (0.25, 0.75)
    queued = Queue(SAMPLES_QUEUE, connection=redis_connection(app)).job_ids
    assert sorted(queued) == [f"sample-{attachment.id}-4x", f"sample-{attachment.id}-8x"]
    audit = db.session.scalars(select(AdminAction).where(AdminAction.action == "image_changed"))
    assert "sample focus 0.250, 0.750" in [row.detail for row in audit]

    for bad, message in (
        ({"focus_x": "1.5", "focus_y": "0.5"}, "A focus point is from 0 to 1."),
        (
            {"focus_x": "0.5", "focus_y": ""},
            "Give both focus values (across and down), or neither.",
        ),
    ):
        refused = admin_client.post(url, data={**form, **bad})
        assert refused.status_code == 400
        assert message in admin_helpers.text(refused)
        db.session.expire_all()
        assert (attachment.focus_x, attachment.focus_y) == (0.25, 0.75)

    cleared = admin_client.post(url, data={**form, "focus_x": "", "focus_y": ""})
    assert cleared.status_code == 303
    db.session.expire_all()
    assert (attachment.focus_x, attachment.focus_y) == (None, None)


def test_removing_an_image_removes_its_samples(app: Flask, admin_client: FlaskClient) -> None:
    attachment = make_attachment(app, width=400, height=300)
    db.session.commit()
    image_id = attachment.id
    assert "sample made by local" in make_sample(app, image_id, "4x")
    assert "no sample to make" in make_sample(app, image_id, "4x")  # made once
    (sample,) = _samples_of(image_id)
    assert (sample.region_width, sample.region_height) == (100, 75)
    keys = [sample.engine_key, sample.plain_key]
    assert all(backend(app).stat(key) is not None for key in keys)
    response = admin_client.post(
        f"/admin/catalog/images/{image_id}/remove", data={"confirm": "yes"}
    )
    assert response.status_code == 303
    assert _samples_of(image_id) == []
    assert all(backend(app).stat(key) is None for key in keys)


def test_with_redis_down_the_page_says_a_sample_is_coming_and_queues_nothing(
    app_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    down = create_app({**app_config, "REDIS_URL": "redis://127.0.0.1:1/0"})
    with down.app_context():
        attachment = make_attachment(down, title="Harbour")
        db.session.commit()
        with caplog.at_level(logging.INFO, logger="smi.fulfilment"):
            page = down.test_client().get(f"/images/{attachment.id}")
        assert page.status_code == 200
        assert page.get_data(as_text=True).count("preparing a sample") == 2
        assert "rq_job=sample-" not in caplog.text  # not even tried
        db.session.remove()
        db.engine.dispose()
