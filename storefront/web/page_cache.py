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

A kept page with nothing of the visitor's in it (the catalog, a post: no form) is also kept as
the whole response Flask sent, and `SharedPages` sends it again before Flask, to a visitor
without a session cookie, while the catalog version and settings generation it was made for are
still in force. Such a visitor is most of a crowd arriving from a link to a post.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, g, request, session
from flask_babel import get_locale
from flask_wtf.csrf import generate_csrf
from werkzeug.http import parse_cookie

from storefront import settings
from storefront.i18n import LANGUAGE_COOKIE, choose_language
from storefront.queues import versions
from storefront.web.language import browser_best
from storefront.web.metrics import ENDPOINT_KEY, StartResponse

PAGES_KEPT = 1_000  # pages per process (about 6 KB each); the cache starts again when full
CACHE = "smi_rendered_pages"  # app.extensions
# WSGI environ: the stamp a page every visitor gets alike was rendered or sent for.
SHARED = "smi.shared_page"


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


def render_kept(
    key: tuple[Hashable, ...] | None, render: Callable[[], str], *, shareable: bool = False
) -> str:
    """The page kept under `key`, else `render()`'s (kept when `key` is not None), with this
    visitor's CSRF token in its form.

    `shareable`: the view does nothing else for a request (it counts no view, say), so a page
    without a CSRF token may be sent again before Flask (SharedPages)."""
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
        if shareable and len(parts) == 1:
            request.environ[SHARED] = stamp
        return page
    if len(parts) == 1:
        if shareable:
            request.environ[SHARED] = stamp
        return parts[0]
    return parts[0] + generate_csrf() + parts[1]


@dataclass(frozen=True)
class _Sent:
    """A response as Flask sent it: status line, headers, body, and the endpoint it came from."""

    status: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    endpoint: str


class SharedPages:
    """WSGI middleware: a page every visitor gets alike, sent again as Flask sent it last, without
    Flask, to a GET or HEAD with no query string and no session cookie, while the catalog version
    and settings generation it was made for are in force (one Redis read, as Flask's request
    would make). Anything else, and any page not yet sent this way, goes to Flask, and a shared
    page Flask sends (a 200 without cookies) is kept, up to PAGES_KEPT."""

    def __init__(self, app: Flask, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        # Each dict holds responses made for its stamp only; a new stamp gets a new dict.
        self.kept: tuple[tuple[int, int] | None, dict[tuple[str, str, str], _Sent]] = (None, {})

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        key = self._key(environ)
        if key is None:
            return self.wsgi_app(environ, start_response)
        stamp, sent_pages = self.kept
        sent = sent_pages.get(key)
        if sent is None or self._stamp() != stamp:
            return self._through_flask(environ, start_response, key)
        environ[ENDPOINT_KEY] = sent.endpoint
        start_response(sent.status, list(sent.headers))
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [sent.body]

    def _key(self, environ: dict[str, Any]) -> tuple[str, str, str] | None:
        """The request's address and language, or None when the page may be the visitor's."""
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD") or environ.get("QUERY_STRING"):
            return None
        cookies = parse_cookie(environ)
        if self.app.config["SESSION_COOKIE_NAME"] in cookies:
            return None
        path = environ.get("PATH_INFO", "")
        language = choose_language(
            path,
            cookies.get(LANGUAGE_COOKIE),
            browser_best(environ.get("HTTP_ACCEPT_LANGUAGE", "")),
        )
        return (environ.get("SCRIPT_NAME", ""), path, language)

    def _stamp(self) -> tuple[int, int] | None:
        """The catalog version and settings generation in force, as `render_kept` would find
        them; None when Flask must look (Redis unreachable, settings to reload)."""
        found = versions(self.app)
        if found is None:
            return None
        generation = settings.settled_generation(self.app, found)
        return None if generation is None else (found["catalog"], generation)

    def _through_flask(
        self, environ: dict[str, Any], start_response: StartResponse, key: tuple[str, str, str]
    ) -> Iterable[bytes]:
        """Flask's answer, kept when it is a shared page: a 200 to a GET, without cookies."""
        answer: list[Any] = []

        def noting(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer[:] = [status, tuple(headers)]
            return start_response(status, headers, exc_info)

        body = self.wsgi_app(environ, noting)
        made_for = environ.get(SHARED)
        if made_for is None or environ["REQUEST_METHOD"] != "GET" or not answer:
            return body
        status, headers = answer
        if not status.startswith("200 ") or any(
            name.lower() == "set-cookie" for name, _ in headers
        ):
            return body
        try:
            content = b"".join(body)
        finally:
            getattr(body, "close", lambda: None)()
        stamp, sent_pages = self.kept
        if stamp != made_for or len(sent_pages) >= PAGES_KEPT:
            sent_pages = {}
        endpoint = str(environ.get(ENDPOINT_KEY, ""))
        sent_pages[key] = _Sent(status, headers, content, endpoint)
        self.kept = (made_for, sent_pages)
        return [content]


def install(app: Flask) -> None:
    """Send shared pages before Flask (see SharedPages): the innermost WSGI layer, so that the
    proxy headers, request ids and metrics around it see every request."""
    app.wsgi_app = SharedPages(app, app.wsgi_app)  # type: ignore[method-assign]
