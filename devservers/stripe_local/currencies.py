"""The currencies this server accepts, Stripe's minimum charge for each, and amount formatting."""

from __future__ import annotations

from decimal import Decimal

# Stripe's minimum charge per settlement currency, in minor units
# (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts).
MINIMUM_CHARGE: dict[str, int] = {
    "usd": 50,
    "aed": 200,
    "aud": 50,
    "bgn": 100,
    "brl": 50,
    "cad": 50,
    "chf": 50,
    "czk": 1500,
    "dkk": 250,
    "eur": 50,
    "gbp": 30,
    "hkd": 400,
    "huf": 17500,
    "inr": 50,
    "jpy": 50,
    "mxn": 1000,
    "myr": 200,
    "nok": 300,
    "nzd": 50,
    "pln": 200,
    "ron": 200,
    "sek": 300,
    "sgd": 50,
    "thb": 1000,
}

ZERO_DECIMAL = frozenset({"jpy", "krw", "vnd", "clp", "pyg", "ugx", "xaf", "xof"})

_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "inr": "₹"}


def is_supported(currency: str) -> bool:
    """Tell whether this server accepts the currency."""
    return currency in MINIMUM_CHARGE


def major_units(amount: int, currency: str) -> str:
    """Format minor units as a plain decimal string, e.g. 192 usd -> "1.92", 500 jpy -> "500"."""
    if currency in ZERO_DECIMAL:
        return str(amount)
    return f"{Decimal(amount) / 100:.2f}"


def display(amount: int, currency: str) -> str:
    """Format an amount the way Stripe's messages do, e.g. "$0.50 usd" or "0.50 chf"."""
    return f"{_SYMBOLS.get(currency, '')}{major_units(amount, currency)} {currency}"


def display_short(amount: int, currency: str) -> str:
    """Format an amount as Stripe's refund messages do, e.g. "$1.92" (or "1.92 chf")."""
    symbol = _SYMBOLS.get(currency)
    if symbol:
        return f"{symbol}{major_units(amount, currency)}"
    return f"{major_units(amount, currency)} {currency}"
