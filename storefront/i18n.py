"""Which language a buyer's page is in: the buyer's choice, else their browser's, else English.

The web side reads the request (storefront/web/language.py) and asks `choose_language`; mails
about an order are written in the language recorded on it at checkout (`Job.locale`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

# English first: the default, and the language of the admin area.
LANGUAGES = ("en", "de")
DEFAULT_LANGUAGE = LANGUAGES[0]
# Each language's name in itself, for the switcher.
LANGUAGE_NAMES = {"en": "English", "de": "Deutsch"}
# The cookie that remembers a buyer's choice, and for how long.
LANGUAGE_COOKIE = "lang"
LANGUAGE_COOKIE_SECONDS = 365 * 24 * 3600
# Pages that are always in English whatever the buyer chose.
ENGLISH_ONLY_PREFIXES = ("/admin",)


def known_language(code: str | None) -> str | None:
    """`code` if the shop speaks it, else None."""
    return code if code in LANGUAGES else None


def choose_language(path: str, chosen: str | None, browser_best: str | None) -> str:
    """The language of a page at `path`: the admin area's English, else the buyer's choice (the
    `lang` cookie), else the best of Accept-Language among LANGUAGES, else English."""
    if path.startswith(ENGLISH_ONLY_PREFIXES):
        return DEFAULT_LANGUAGE
    return known_language(chosen) or known_language(browser_best) or DEFAULT_LANGUAGE


def order_language(code: str | None) -> str:
    """The language of an order's mails: the one recorded on it, English if none or unknown."""
    return known_language(code) or DEFAULT_LANGUAGE


def same_site_path(target: str | None) -> str:
    """`target` if it is a path on this site (`/images/3?x=1`), else `/`: never another host."""
    if not target or len(target) > 2000 or not target.startswith("/"):
        return "/"
    if target.startswith(("//", "/\\")) or any(ord(c) < 32 or c == "\\" for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target
