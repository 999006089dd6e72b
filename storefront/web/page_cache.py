"""Buyer pages kept rendered, per process, until what they show changes.

The catalog, a post's page and an image's page depend only on the catalog (posts, images,
samples) and the settings in force, on the page's language and address and, for an image, on
which of its samples are ready. Each process keeps the pages it rendered for the catalog
version and settings generation in force (`queues.versions`, read from Redis once per request:
an edit or a save anywhere drops them everywhere at the next request) and sends a kept page
again with what is one visitor's put in: the Buy form's CSRF token (per session). A page is
rendered afresh, and not kept, when it cannot be the same for every visitor: a query string
(`?cancelled=1`; the language links repeat it), messages flashed to this visitor, a form with
errors, Redis unreachable (nothing would say when to drop it), or templates reloaded while
developing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from flask import current_app, g, request, session
from flask_babel import get_locale
from flask_wtf.csrf import generate_csrf

from storefront import settings
from storefront.queues import versions

PAGES_KEPT = 1_000  # pages per process (about 6 KB each); the cache starts again when full
CACHE = "smi_rendered_pages"  # app.extensions


@dataclass
class _Kept:
    """The pages rendered for one catalog version and settings generation, each split where
    the visitor's CSRF token goes (one part: the page has none)."""

    stamp: tuple[int, int]
    pages: dict[tuple[Hashable, ...], tuple[str, ...]] = field(default_factory=dict)


def page_key(*parts: Hashable) -> tuple[Hashable, ...] | None:
    """What this request's page is kept under: `parts` (what else the page shows), the address
    and the language; None when it must be rendered afresh for this visitor."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if request.query_string or app.jinja_env.auto_reload or versions(app) is None:
        return None
    if "_flashes" in session:
        return None
    return (request.script_root, request.path, str(get_locale()), *parts)


def render_kept(key: tuple[Hashable, ...] | None, render: Callable[[], str]) -> str:
    """The page kept under `key`, else `render()`'s (kept when `key` is not None), with this
    visitor's CSRF token in its form."""
    if key is None:
        return render()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    found_versions = versions(app)
    if found_versions is None:
        return render()
    settings.current(app)  # a save this process has not seen yet changes the generation
    stamp = (found_versions["catalog"], settings.generation(app))
    kept: _Kept | None = app.extensions.get(CACHE)
    if kept is None or kept.stamp != stamp or len(kept.pages) >= PAGES_KEPT:
        kept = app.extensions[CACHE] = _Kept(stamp)
    parts = kept.pages.get(key)
    if parts is None:
        page = render()
        # Flask-WTF keeps the token it put in the form on `g`, under the field's name.
        token = g.get(app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))
        parts = tuple(page.split(token)) if isinstance(token, str) and token else (page,)
        if len(parts) <= 2:  # the token once, or a page without it
            kept.pages[key] = parts
        return page
    if len(parts) == 1:
        return parts[0]
    return parts[0] + generate_csrf() + parts[1]
