"""How amounts, sizes and times are written for people, in the language of the page or mail."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.numbers import format_currency, format_decimal
from flask_babel import get_locale

# How each language writes a moment (Babel's patterns); the zone's abbreviation follows.
DATETIME_PATTERNS = {"en": "dd MMMM yyyy, HH:mm", "de": "d. MMMM yyyy, HH:mm"}


def _locale() -> str:
    """The locale of the page or mail being written (English outside one)."""
    return str(get_locale() or "en")


def format_money(amount: Decimal | None, currency: str = "usd") -> str:
    """`$1.92` in English, `1,92 $` in German, `¥1,920`: Babel's way for the locale."""
    if amount is None:
        return "—"
    return format_currency(amount, currency.upper(), locale=_locale())


def format_number(value: Decimal | float | int, places: int = 0) -> str:
    """`12.3` (`12,3` in German) with `places` decimals, no grouping."""
    pattern = "0." + "0" * places if places else "0"
    return format_decimal(value, format=pattern, locale=_locale())


def format_bytes(size: int | None) -> str:
    """`3.4 MB`-style sizes (`3,4 MB` in German), in decimal units as file managers show them."""
    if size is None:
        return "—"
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    return f"{format_number(value, 0 if unit == 'bytes' else 1)} {unit}"


def format_moment(value: dt.datetime | None) -> str:
    """`05 March 2026, 14:00 CET` (`5. März 2026, 14:00 CET`): an aware time in its own zone."""
    if value is None:
        return "—"
    locale = _locale()
    pattern = DATETIME_PATTERNS.get(locale.partition("_")[0], "long")
    return f"{format_datetime(value, pattern, locale=locale)} {value.tzname()}"


def local_time(value: dt.datetime | None, zone: str) -> dt.datetime | None:
    """A stored (naive, UTC) time in the time zone `zone`, for people to read."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC).astimezone(ZoneInfo(zone))
