"""Findable pages: titles, descriptions, link previews, canonical URLs, sitemap, robots, srcset."""

from __future__ import annotations

import datetime as dt
import html
import io
import re
import xml.etree.ElementTree as ET

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from storefront.catalog.editing import remove_image, update_image
from storefront.catalog.library import ensure_preview, preview_key
from storefront.extensions import db
from storefront.storage import backend
from tests.factories import make_attachment, make_job, make_post

BASE = "http://shop.test"
SITEMAP = "{http://www.sitemaps.org/schemas/sitemap/0.9}"


def _meta(page: str, key: str) -> str | None:
    """The content of a page's `<meta name|property=key>`, unescaped; None if it has none."""
    found = re.search(rf'<meta (?:name|property)="{re.escape(key)}" content="([^"]*)"', page)
    return html.unescape(found.group(1)) if found else None


def _head(page: str) -> tuple[str, str | None, str | None]:
    title = re.search(r"<title>(.*?)</title>", page, re.S)
    canonical = re.search(r'<link rel="canonical" href="([^"]+)"', page)
    assert title is not None
    return html.unescape(title.group(1)), _meta(page, "description"), canonical and canonical[1]


def _served(client: FlaskClient, url: str) -> bytes:
    """The body the shop serves at one of its absolute URLs (200 required)."""
    assert url.startswith(BASE + "/"), url
    with client.get(url.removeprefix(BASE)) as response:
        assert response.status_code == 200, url
        return response.data


def test_catalog_post_and_image_pages_have_their_own_title_description_and_canonical_url(
    app: Flask, client: FlaskClient
) -> None:
    post = make_post(slug="harbours", title="Harbours at dusk", body="Boats, lights and water.")
    image = make_attachment(app, post, title="Old harbour", alt_text="Fishing boats at a quay")
    db.session.commit()
    heads = {
        "/": _head(client.get("/").get_data(as_text=True)),
        "/posts/harbours": _head(client.get("/posts/harbours").get_data(as_text=True)),
        f"/images/{image.id}": _head(
            client.get(f"/images/{image.id}?cancelled=1").get_data(as_text=True)
        ),
    }
    assert heads["/"][0] == "Catalog · Sell My Images"
    assert heads["/posts/harbours"][:2] == (
        "Harbours at dusk · Sell My Images",
        "Boats, lights and water.",
    )
    title, description, _canonical = heads[f"/images/{image.id}"]
    assert title == "Old harbour · Sell My Images"
    assert description is not None and description.startswith(
        "Fishing boats at a quay. 200 × 150 px"
    )
    assert (
        len({head[0] for head in heads.values()}) == len({head[1] for head in heads.values()}) == 3
    )
    # The canonical URL is absolute, from PUBLIC_BASE_URL, without the query string.
    assert {path: head[2] for path, head in heads.items()} == {path: BASE + path for path in heads}


def test_image_page_carries_open_graph_and_twitter_tags_with_a_preview_the_shop_serves(
    app: Flask, client: FlaskClient
) -> None:
    image = make_attachment(
        app, width=1600, height=900, title="Old harbour", alt_text='Boats at the "old" quay'
    )
    db.session.commit()
    page = client.get(f"/images/{image.id}").get_data(as_text=True)
    assert _meta(page, "og:title") == _meta(page, "twitter:title") == "Old harbour"
    assert _meta(page, "og:url") == f"{BASE}/images/{image.id}"
    assert _meta(page, "og:description") == _meta(page, "description")
    assert _meta(page, "twitter:card") == "summary_large_image"
    assert (
        _meta(page, "og:image:alt") == _meta(page, "twitter:image:alt") == 'Boats at the "old" quay'
    )
    preview = _meta(page, "og:image")
    assert preview is not None and preview == _meta(page, "twitter:image")
    with Image.open(io.BytesIO(_served(client, preview))) as served:
        assert served.format == "JPEG"
        assert served.size == (
            int(_meta(page, "og:image:width") or 0),
            int(_meta(page, "og:image:height") or 0),
        )
        assert served.size == (1200, 675)


def test_private_pages_ask_not_to_be_indexed(app: Flask, client: FlaskClient) -> None:
    job = make_job(
        make_attachment(app),
        status="processing",
        payment_status="paid",
        stripe_checkout_session_id="cs_test_private",
    )
    db.session.commit()
    pages = [
        client.get(f"/orders/{job.job_id}?session_id=cs_test_private", follow_redirects=True),
        client.get("/download/" + "0" * 64),
        client.get("/download/resend"),
        client.get("/no-such-page"),
        client.get("/admin/login"),
    ]
    assert [page.status_code for page in pages] == [200, 404, 200, 404, 200]
    for page in pages:
        assert _meta(page.get_data(as_text=True), "robots") == "noindex", page.request.path
    assert _meta(client.get("/").get_data(as_text=True), "robots") is None


def test_robots_txt_keeps_crawlers_out_of_private_pages_and_names_the_sitemap(
    client: FlaskClient,
) -> None:
    response = client.get("/robots.txt")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    lines = response.get_data(as_text=True).splitlines()
    disallowed = {line.removeprefix("Disallow: ") for line in lines if line.startswith("Disallow:")}
    assert {"/download/", "/orders/", "/my-orders", "/checkout", "/admin"} <= disallowed
    assert "Disallow: /" not in lines and "Disallow: /images/" not in lines
    assert f"Sitemap: {BASE}/sitemap.xml" in lines


def _sitemap(client: FlaskClient) -> dict[str, tuple[str | None, list[str]]]:
    response = client.get("/sitemap.xml")
    assert response.status_code == 200 and response.mimetype == "application/xml"
    root = ET.fromstring(response.data)
    entries = {}
    for url in root.iter(f"{SITEMAP}url"):
        images = [
            e.text or "" for e in url.iter("{http://www.google.com/schemas/sitemap-image/1.1}loc")
        ]
        entries[url.findtext(f"{SITEMAP}loc") or ""] = (url.findtext(f"{SITEMAP}lastmod"), images)
    return entries


def test_sitemap_lists_posts_and_images_for_sale_with_lastmod_and_follows_changes(
    app: Flask, client: FlaskClient
) -> None:
    post = make_post(slug="harbours", updated_at=dt.datetime(2026, 3, 1, 8, 0, 0))
    for_sale = make_attachment(app, post, updated_at=dt.datetime(2026, 3, 2, 9, 30, 15))
    not_for_sale = make_attachment(
        app, post, for_sale=False, updated_at=dt.datetime(2026, 3, 3, 10, 0, 0)
    )
    db.session.commit()
    entries = _sitemap(client)
    assert set(entries) == {f"{BASE}/", f"{BASE}/posts/harbours", f"{BASE}/images/{for_sale.id}"}
    image_lastmod, previews = entries[f"{BASE}/images/{for_sale.id}"]
    assert image_lastmod == "2026-03-02T09:30:15+00:00"
    assert previews == [f"{BASE}/images/{for_sale.id}/preview/large.jpg"]
    _served(client, previews[0])
    # A post changes when any of its images does; the catalog when anything does.
    assert entries[f"{BASE}/posts/harbours"][0] == "2026-03-03T10:00:00+00:00"
    assert entries[f"{BASE}/"][0] == "2026-03-03T10:00:00+00:00"

    update_image(not_for_sale, title="Now for sale", alt_text="", for_sale=True, admin="test")
    entries = _sitemap(client)
    assert f"{BASE}/images/{not_for_sale.id}" in entries
    changed = dt.datetime.fromisoformat(entries[f"{BASE}/images/{not_for_sale.id}"][0] or "")
    assert changed > dt.datetime(2026, 3, 3, tzinfo=dt.UTC)
    assert entries[f"{BASE}/posts/harbours"][0] == entries[f"{BASE}/images/{not_for_sale.id}"][0]


def test_sitemap_answers_304_to_a_crawler_that_has_it(app: Flask, client: FlaskClient) -> None:
    make_attachment(app)
    db.session.commit()
    first = client.get("/sitemap.xml")
    etag = first.headers["ETag"]
    again = client.get("/sitemap.xml", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    make_attachment(app)
    db.session.commit()
    changed = client.get("/sitemap.xml", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def _srcset(page: str) -> list[tuple[str, int]]:
    found = re.search(r'<figure class="preview">\s*<img [^>]*srcset="([^"]+)" sizes="[^"]+"', page)
    assert found is not None
    return [
        (url, int(width.rstrip("w"))) for url, width in (c.split() for c in found[1].split(", "))
    ]


@pytest.mark.parametrize(
    ("width", "expected"),
    [(3000, [480, 1200, 2400]), (1600, [480, 1200, 1600]), (1200, [480, 1200]), (300, [300])],
)
def test_image_page_srcset_lists_the_previews_the_original_is_wide_enough_for(
    app: Flask, client: FlaskClient, width: int, expected: list[int]
) -> None:
    image = make_attachment(app, width=width, height=width // 2)
    db.session.commit()
    candidates = _srcset(client.get(f"/images/{image.id}").get_data(as_text=True))
    assert [w for _url, w in candidates] == expected
    for url, declared in candidates:
        # Each made when first asked for, at the width the srcset says.
        with Image.open(io.BytesIO(_served(client, BASE + url))) as preview:
            assert preview.format == "JPEG" and preview.size == (declared, declared // 2)


def test_a_width_the_shop_does_not_make_is_404(app: Flask, client: FlaskClient) -> None:
    image = make_attachment(app)
    db.session.commit()
    assert client.get(f"/images/{image.id}/preview/w999.jpg").status_code == 404
    assert client.get(f"/images/{image.id}/preview/w480.png").status_code == 404


def test_removing_an_image_removes_its_width_previews(app: Flask) -> None:
    image = make_attachment(app, width=1300, height=200)
    db.session.commit()
    made = [ensure_preview(app, image, size).key for size in ("thumb", "w480", "w1200")]
    assert made[1:] == [preview_key(image.id, "w480"), preview_key(image.id, "w1200")]
    storage = backend(app)
    assert all(storage.stat(key) is not None for key in made)
    remove_image(app, image, admin="test")
    assert [storage.stat(key) for key in made] == [None, None, None]
