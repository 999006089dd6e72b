"""The buyer's mails: a picture of what was bought, and a fallback address that wraps."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from storefront.extensions import db
from storefront.jobs.emails import build_message
from storefront.models import Job, utcnow
from tests.conftest import LiveApp
from tests.factories import make_attachment, make_job

DOWNLOAD_URL = "http://shop.test/download/" + "0123456789abcdef" * 4


class _Tags(HTMLParser):
    """Every tag of a document with its attributes, and the text inside each <a>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.link_texts: list[str] = []
        self._in_link = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag == "a":
            self._in_link = True
            self.link_texts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_link = False

    def handle_data(self, data: str) -> None:
        if self._in_link:
            self.link_texts[-1] += data


def _parsed(html: str) -> _Tags:
    tags = _Tags()
    tags.feed(html)
    return tags


def _bought(app: Flask, **fields: Any) -> Job:
    attachment = make_attachment(
        app, width=1600, height=1200, title="Old harbour", alt_text="Fishing boats at a quay"
    )
    values: dict[str, Any] = {
        "status": "completed",
        "payment_status": "paid",
        "refund_amount": Decimal("0.50"),
        "upscaled_file_size": 12_345_678,
        "download_expires_at": utcnow() + dt.timedelta(days=3),
    }
    values.update(fields)
    job = make_job(attachment, **values)
    db.session.commit()
    return job


@pytest.mark.parametrize("kind", ["paid", "ready", "failed", "refunded"])
def test_buyer_mails_show_the_shop_hosted_preview_with_alt_text(
    app: Flask, client: FlaskClient, kind: str
) -> None:
    job = _bought(app)
    message = build_message(kind, job, download_url=DOWNLOAD_URL)
    images = [attrs for tag, attrs in _parsed(message.html).tags if tag == "img"]
    assert len(images) == 1
    image = images[0]
    assert image["alt"] == "Fishing boats at a quay"
    assert image["src"] == f"http://shop.test/images/{job.attachment_id}/preview/thumb.jpg"
    assert (image["width"], image["height"]) == ("427", "320")  # 1600 × 1200 within 480 × 320
    with client.get(image["src"].removeprefix("http://shop.test")) as served:
        assert served.status_code == 200 and served.mimetype == "image/jpeg"
        with Image.open(io.BytesIO(served.data)) as preview:
            # The file is at least as large as the mail shows it: sharp, never stretched.
            assert preview.size[0] >= 427 and preview.size[1] >= 320


def test_mail_falls_back_to_the_title_for_alt_text_and_has_no_picture_of_a_removed_image(
    app: Flask,
) -> None:
    job = _bought(app)
    job.attachment.alt_text = ""
    db.session.commit()
    [image] = [a for tag, a in _parsed(build_message("paid", job).html).tags if tag == "img"]
    assert image["alt"] == "Old harbour"
    job.attachment_id = None
    db.session.commit()
    db.session.expire_all()
    gone = db.session.get(Job, job.id)
    assert gone is not None and gone.attachment is None
    assert [tag for tag, _a in _parsed(build_message("paid", gone).html).tags if tag == "img"] == []


def test_ready_mail_fallback_address_is_a_link_that_wraps(app: Flask) -> None:
    job = _bought(app)
    tags = _parsed(build_message("ready", job, download_url=DOWNLOAD_URL).html)
    links = [attrs for tag, attrs in tags.tags if tag == "a"]
    fallback = links[tags.link_texts.index(DOWNLOAD_URL)]
    assert fallback["href"] == DOWNLOAD_URL
    style = fallback["style"].replace(" ", "")
    assert "word-break:break-all" in style and "overflow-wrap:anywhere" in style


@pytest.mark.browser
@pytest.mark.slow
def test_ready_mail_fits_a_320_px_wide_screen_with_its_picture_loaded(
    live_app: LiveApp,
    new_browser_page,  # type: ignore[no-untyped-def]
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    job = _bought(live_app.app)
    long_url = f"{live_app.url}/download/" + "0123456789abcdef" * 4
    html = build_message("ready", job, download_url=long_url).html
    page = new_browser_page(320, 640)
    page.set_content(html, wait_until="load")
    overflow = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert overflow[0] <= overflow[1] == 320
    link = page.get_by_role("link", name=long_url)
    box = link.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 320
    picture = page.get_by_role("img", name="Fishing boats at a quay")
    assert picture.evaluate("img => img.complete && img.naturalWidth") >= 427
    assert picture.bounding_box()["width"] <= 320  # type: ignore[index]
    shot = tmp_path / "ready-mail-320.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.size[0] == 320
