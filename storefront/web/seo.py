"""What search engines and link previews read: absolute URLs, the sitemap and robots.txt."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request, url_for
from flask.typing import ResponseReturnValue

from storefront.catalog.library import catalog_posts
from storefront.queues import versions

bp = Blueprint("seo", __name__)

# Pages that are one buyer's or the owner's, never a search result.
PRIVATE_PATHS = ("/download/", "/orders/", "/my-orders", "/checkout", "/admin", "/originals/")
SITEMAP_CACHE = "smi_sitemap"  # app.extensions: the sitemap as of one catalog version


@bp.app_template_global()
def absolute_url(endpoint: str, **values: Any) -> str:
    """The URL of a page or file as others reach it: PUBLIC_BASE_URL, then the path."""
    return f"{current_app.config['PUBLIC_BASE_URL']}{url_for(endpoint, **values)}"


@dataclass(frozen=True)
class _Sitemap:
    version: int
    body: bytes
    etag: str


@bp.get("/sitemap.xml")
def sitemap() -> ResponseReturnValue:
    """The catalog, its posts and the images for sale, with when each last changed.

    Made once per catalog version (the image pages' copies feed it) and answered with an ETag,
    so a crawler that has it gets a 304.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    version = (versions(app) or {}).get("catalog")
    cached: _Sitemap | None = app.extensions.get(SITEMAP_CACHE)
    if cached is None or version is None or cached.version != version:
        body = _render_sitemap().encode()
        cached = _Sitemap(version or -1, body, hashlib.sha256(body).hexdigest()[:32])
        if version is not None:
            app.extensions[SITEMAP_CACHE] = cached
    response = Response(cached.body, mimetype="application/xml")
    response.set_etag(cached.etag)
    response.cache_control.public = True
    response.cache_control.max_age = 3600
    return response.make_conditional(request)


def _render_sitemap() -> str:
    posts = catalog_posts(current_app._get_current_object())  # type: ignore[attr-defined]
    entries: list[tuple[str, dt.datetime | None, str | None]] = []
    for post in posts:
        changed = max([post.updated_at, *(image.updated_at for image in post.attachments)])
        entries.append((absolute_url("shop.post", slug=post.slug), changed, None))
        for image in post.attachments:
            if image.for_sale:
                preview = absolute_url("shop.preview", attachment_id=image.id, size="large")
                entries.append(
                    (absolute_url("shop.image", attachment_id=image.id), image.updated_at, preview)
                )
    newest = max((changed for _url, changed, _preview in entries if changed), default=None)
    entries.insert(0, (absolute_url("shop.index"), newest, None))
    return render_template(
        "seo/sitemap.xml",
        entries=[(url, _w3c_date(changed), preview) for url, changed, preview in entries],
    )


def _w3c_date(value: dt.datetime | None) -> str | None:
    """A stored (naive, UTC) time as the sitemap's lastmod: `2026-12-02T03:35:47+00:00`."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC, microsecond=0).isoformat()


@bp.get("/robots.txt")
def robots() -> ResponseReturnValue:
    """Keep crawlers out of private pages; point them at the sitemap."""
    lines = ["User-agent: *", *(f"Disallow: {path}" for path in PRIVATE_PATHS), ""]
    lines.append(f"Sitemap: {absolute_url('seo.sitemap')}")
    response = Response("\n".join(lines) + "\n", mimetype="text/plain")
    response.cache_control.public = True
    response.cache_control.max_age = 86400
    return response
