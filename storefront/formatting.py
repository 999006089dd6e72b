"""How amounts, sizes and times are written for people."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "cad": "CA$", "aud": "A$", "jpy": "¥"}


def format_money(amount: Decimal | None, currency: str = "usd") -> str:
    """`$1.92`, `€7.68`, or `12.00 CHF` for a currency without a symbol here."""
    if amount is None:
        return "—"
    symbol = SYMBOLS.get(currency.lower())
    if currency.lower() == "jpy":
        return f"¥{amount:,.0f}"
    return f"{symbol}{amount:,.2f}" if symbol else f"{amount:,.2f} {currency.upper()}"


def format_bytes(size: int | None) -> str:
    """`3.4 MB`-style sizes, in decimal units as file managers show them."""
    if size is None:
        return "—"
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def local_time(value: dt.datetime | None, zone: str) -> dt.datetime | None:
    """A stored (naive, UTC) time in the time zone `zone`, for people to read."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC).astimezone(ZoneInfo(zone))
