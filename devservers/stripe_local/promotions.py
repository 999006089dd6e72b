"""Promotion codes and their coupons, and a session's totals: subtotal − discount + tax.

Shapes follow Stripe's: a promotion code (`promo_…`) carries its `code`, `active`,
`max_redemptions`, `times_redeemed` and its coupon (`percent_off`, or `amount_off` with `currency`).
Tax is one fixed rate (the server's `--tax-percent`) on top of tax-exclusive prices, as Stripe Tax
charges for a buyer whose address has that rate.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from . import currencies
from .errors import StripeApiError

Obj = dict[str, Any]

CODE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


def parse_percent(value: Any, param: str = "percent_off") -> Decimal:
    """A percentage above 0 and at most 100 (two decimals at most), or Stripe's error."""
    try:
        percent = Decimal(str(value).strip())
    except InvalidOperation:
        raise StripeApiError(f"Invalid decimal: {value}", param=param) from None
    if not percent.is_finite() or not 0 < percent <= 100 or percent != round(percent, 2):
        raise StripeApiError(
            "percent_off must be greater than 0 and at most 100, with at most two decimals.",
            param=param,
        )
    return percent


def round_half_up(value: Decimal) -> int:
    """Minor units rounded half up."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def coupon_discount(coupon: Obj, subtotal: int) -> int:
    """What the coupon takes off `subtotal` (minor units), never more than the subtotal."""
    if coupon.get("percent_off") is not None:
        off = round_half_up(Decimal(subtotal) * Decimal(str(coupon["percent_off"])) / 100)
    else:
        off = int(coupon["amount_off"])
    return min(off, subtotal)


def tax_on(amount: int, percent: Decimal) -> int:
    """Tax at `percent` on a tax-exclusive `amount` (minor units)."""
    return round_half_up(Decimal(amount) * percent / 100)


def split(total: int, weights: list[int]) -> list[int]:
    """Share `total` out in proportion to `weights`; the last share takes the rounding."""
    whole = sum(weights)
    if not weights:
        return []
    if whole == 0:
        return [0] * (len(weights) - 1) + [total]
    shares = [total * weight // whole for weight in weights[:-1]]
    return [*shares, total - sum(shares)]


def apply_totals(session: Obj, items: list[Obj], coupon: Obj | None, tax_percent: Decimal) -> None:
    """Set the session's and its line items' subtotal, discount, tax and total, in place."""
    subtotals = [int(item["amount_subtotal"]) for item in items]
    subtotal = sum(subtotals)
    discount = coupon_discount(coupon, subtotal) if coupon else 0
    taxed = bool(session["automatic_tax"]["enabled"])
    tax = tax_on(subtotal - discount, tax_percent) if taxed else 0
    for item, item_discount, item_tax in zip(
        items, split(discount, subtotals), split(tax, subtotals), strict=True
    ):
        item["amount_discount"] = item_discount
        item["amount_tax"] = item_tax
        item["amount_total"] = item["amount_subtotal"] - item_discount + item_tax
    session["amount_subtotal"] = subtotal
    session["amount_total"] = subtotal - discount + tax
    session["total_details"] = dict(
        session["total_details"], amount_discount=discount, amount_tax=tax
    )


def check_redeemable(promotion: Obj, currency: str) -> None:
    """Refuse a code that is inactive, used up, or for another currency (Stripe's wording)."""
    code = promotion["code"]
    coupon = promotion["coupon"]
    if not promotion["active"] or not coupon["valid"]:
        raise StripeApiError(f"This code is not active: {code}.", code="promotion_code_inactive")
    limit = promotion.get("max_redemptions")
    if limit is not None and promotion["times_redeemed"] >= limit:
        raise StripeApiError(
            f"This code has been used the most times it may be: {code}.",
            code="promotion_code_inactive",
        )
    if coupon.get("amount_off") is not None and coupon.get("currency") != currency:
        raise StripeApiError(
            f"This code is not valid for a purchase in {currency.upper()}: {code}.",
            code="promotion_code_invalid",
        )


def check_minimum(session: Obj) -> None:
    """Refuse totals above zero but below Stripe's minimum charge (a free order is allowed)."""
    total = int(session["amount_total"])
    currency = str(session["currency"])
    minimum = currencies.MINIMUM_CHARGE[currency]
    if 0 < total < minimum:
        raise StripeApiError(
            "This code cannot be used on this order: the total would be below the minimum "
            f"charge of {currencies.display(minimum, currency)}.",
            code="amount_too_small",
        )
