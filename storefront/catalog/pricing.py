"""Prices of upscaled images: the one formula, in Decimal, rounded half-up to the cent."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from flask_babel import lazy_gettext as _l
from flask_babel.speaklater import LazyString

CENT = Decimal("0.01")
FACTORS = {"4x": 4, "8x": 8}
# Currencies whose smallest unit is the whole unit (Stripe's zero-decimal currencies).
ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)


@dataclass(frozen=True)
class PriceSettings:
    """The business settings the formula reads."""

    markup_percent: Decimal
    cost_per_credit: Decimal
    credits_per_megapixel: Decimal
    min_price: Decimal
    max_output_megapixels: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PriceSettings:
        """Read the settings from an app's configuration."""
        return cls(
            markup_percent=Decimal(config["MARKUP_PERCENT"]),
            cost_per_credit=Decimal(config["COST_PER_CREDIT"]),
            credits_per_megapixel=Decimal(config["CREDITS_PER_MEGAPIXEL"]),
            min_price=Decimal(config["MIN_PRICE"]),
            max_output_megapixels=int(config["MAX_OUTPUT_MEGAPIXELS"]),
        )


@dataclass(frozen=True)
class Quote:
    """The price of one resolution of one image, and what it costs us."""

    resolution: str
    factor: int
    output_width: int
    output_height: int
    megapixels: Decimal
    credits: int
    cost: Decimal
    price: Decimal


@dataclass(frozen=True)
class Offer:
    """A resolution as the image page shows it: its quote, or why it is not offered (a sentence
    translated when it is shown, in the page's language)."""

    quote: Quote
    unavailable_reason: str | LazyString | None = None
    engine: str = ""

    @property
    def available(self) -> bool:
        """Whether a buyer may choose this resolution."""
        return self.unavailable_reason is None


def quote(width: int, height: int, resolution: str, settings: PriceSettings) -> Quote:
    """Price `resolution` of a `width` × `height` image with the DESIGN formula."""
    if width <= 0 or height <= 0:
        raise ValueError("image size must be positive")
    factor = FACTORS[resolution]
    out_w, out_h = width * factor, height * factor
    megapixels = Decimal(out_w * out_h) / Decimal(1_000_000)
    credits = math.ceil(megapixels * settings.credits_per_megapixel)
    cost = credits * settings.cost_per_credit
    raw = cost * (1 + settings.markup_percent / Decimal(100))
    price = max(settings.min_price, raw).quantize(CENT, rounding=ROUND_HALF_UP)
    return Quote(resolution, factor, out_w, out_h, megapixels, credits, cost, price)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Stripe's integer amount for `amount` in `currency`."""
    if currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def from_minor_units(amount: int, currency: str) -> Decimal:
    """The Decimal amount for Stripe's integer `amount` in `currency`."""
    if currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return Decimal(amount)
    return (Decimal(amount) / 100).quantize(CENT)


def offers(
    width: int,
    height: int,
    *,
    for_sale: bool,
    resolutions: tuple[str, ...],
    settings: PriceSettings,
) -> list[Offer]:
    """Every resolution of an image, each priced, with the reason when it is not offered."""
    result = []
    for resolution in FACTORS:
        q = quote(width, height, resolution, settings)
        reason: LazyString | None = None
        if not for_sale:
            reason = _l("This image is not for sale.")
        elif resolution not in resolutions:
            reason = _l("This resolution is not offered.")
        elif q.megapixels > settings.max_output_megapixels:
            reason = _l(
                "The output would be %(megapixels)s megapixels, more than the %(limit)s "
                "megapixels we can deliver.",
                megapixels=format(q.megapixels, ".0f"),
                limit=settings.max_output_megapixels,
            )
        result.append(Offer(q, reason))
    return result
