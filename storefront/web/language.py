"""The language switcher: `/language/<code>` remembers the buyer's choice and goes back."""

from __future__ import annotations

import functools
from typing import Any

from babel import Locale
from flask import Blueprint, Flask, abort, redirect, request
from flask.typing import ResponseReturnValue
from flask_babel import get_locale, refresh
from werkzeug.datastructures import LanguageAccept
from werkzeug.http import parse_accept_header
from werkzeug.wrappers import Response

from storefront.i18n import (
    ENGLISH_ONLY_PREFIXES,
    LANGUAGE_COOKIE,
    LANGUAGE_COOKIE_SECONDS,
    LANGUAGE_NAMES,
    LANGUAGES,
    choose_language,
    known_language,
    same_site_path,
)

bp = Blueprint("language", __name__)


def select_locale() -> str | Locale:
    """Flask-Babel's locale selector: the language of this request (English outside one)."""
    if not request:
        return LANGUAGES[0]
    chosen = choose_language(
        request.path,
        request.cookies.get(LANGUAGE_COOKIE),
        browser_best(request.headers.get("Accept-Language", "")),
    )
    return _locale(chosen)


@functools.lru_cache(maxsize=256)
def browser_best(accept_language: str) -> str | None:
    """The best of LANGUAGES for an Accept-Language header (`request.accept_languages`' answer),
    worked out once per header value: browsers send a handful of them."""
    return parse_accept_header(accept_language, LanguageAccept).best_match(LANGUAGES)


@functools.cache
def _locale(code: str) -> Locale:
    """Babel's Locale of one of LANGUAGES, made once (Flask-Babel parses a code per request)."""
    return Locale.parse(code)


@bp.route("/language/<code>", methods=["GET", "POST"])
def choose(code: str) -> ResponseReturnValue:
    """Remember `code` in the `lang` cookie (a year) and go back to `next`, a path on this site.

    A GET may set it: a language is a preference, not an order, and a link works without a form.
    """
    if known_language(code) is None:
        abort(404)
    target = same_site_path(request.values.get("next"))
    response = redirect(target, 303)
    response.set_cookie(
        LANGUAGE_COOKIE,
        code,
        max_age=LANGUAGE_COOKIE_SECONDS,
        samesite="Lax",
        httponly=True,
        secure=request.is_secure,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def switcher() -> dict[str, Any]:
    """Template values: the page's language, and a link to this page in each other language."""
    current = str(get_locale() or LANGUAGES[0])
    if not request or request.path.startswith(ENGLISH_ONLY_PREFIXES):
        return {"page_language": current, "language_links": []}  # a mail, or the admin area
    here = request.full_path if request.query_string else request.path
    links = [
        {"code": code, "name": LANGUAGE_NAMES[code], "next": here}
        for code in LANGUAGES
        if code != current
    ]
    return {"page_language": current, "language_links": links}


def vary_by_language(response: Response) -> Response:
    """Buyer pages differ by language: say so to caches (Vary) and to the browser."""
    if request.path.startswith(("/static/", *ENGLISH_ONLY_PREFIXES)):
        return response
    if response.mimetype in ("text/html", "application/json"):
        response.vary.update(("Accept-Language", "Cookie"))
        response.headers.setdefault("Content-Language", str(get_locale() or LANGUAGES[0]))
    return response


def forget_last_locale() -> None:
    """Flask-Babel keeps the locale on `g`, which requests share when they run inside one app
    context (a test's, a command's): each request chooses afresh."""
    refresh()


def install(app: Flask) -> None:
    """The switcher's route, its template values, and the Vary header."""
    app.register_blueprint(bp)
    app.before_request(forget_last_locale)
    app.context_processor(switcher)
    app.after_request(vary_by_language)
