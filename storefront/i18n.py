"""Which language a buyer's page is in (Flask-Babel's locale selector)."""

from __future__ import annotations

# English first: the default, and the language of the admin area.
LANGUAGES = ("en",)


def select_locale() -> str:
    """The locale of the current request."""
    return LANGUAGES[0]
