"""The price formula: DESIGN's worked examples, and shown = charged = stored, to the cent."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storefront.catalog.pricing import (
    PriceSettings,
    from_minor_units,
    offers,
    quote,
    to_minor_units,
)

DEFAULTS = PriceSettings(
    markup_percent=Decimal("200"),
    cost_per_credit=Decimal("0.04"),
    credits_per_megapixel=Decimal("0.25"),
    min_price=Decimal("0.50"),
    max_output_megapixels=400,
)


@pytest.mark.parametrize(
    ("width", "height", "resolution", "credits", "cost", "price"),
    [
        (2000, 2000, "4x", 16, "0.64", "1.92"),
        (2000, 2000, "8x", 64, "2.56", "7.68"),
        (1000, 750, "4x", 3, "0.12", "0.50"),
    ],
)
def test_worked_examples(
    width: int, height: int, resolution: str, credits: int, cost: str, price: str
) -> None:
    q = quote(width, height, resolution, DEFAULTS)
    assert (q.credits, q.cost, q.price) == (credits, Decimal(cost), Decimal(price))


def test_output_size_and_megapixels() -> None:
    q = quote(600, 400, "8x", DEFAULTS)
    assert (q.output_width, q.output_height, q.megapixels) == (4800, 3200, Decimal("15.36"))


def test_price_rounds_half_up_to_the_cent() -> None:
    # 1 credit × 0.005 × 1.1 = 0.0055, which rounds half-up to 0.01.
    settings_ = PriceSettings(Decimal("10"), Decimal("0.005"), Decimal("1"), Decimal("0"), 400)
    assert quote(100, 100, "4x", settings_).price == Decimal("0.01")
    # 0.125 exactly → 0.13, never 0.12.
    settings_ = PriceSettings(Decimal("0"), Decimal("0.125"), Decimal("1"), Decimal("0"), 400)
    assert quote(100, 100, "4x", settings_).price == Decimal("0.13")


def test_tier_over_the_largest_output_is_unavailable_with_its_reason() -> None:
    result = offers(3000, 2200, for_sale=True, resolutions=("4x", "8x"), settings=DEFAULTS)
    by_name = {offer.quote.resolution: offer for offer in result}
    assert by_name["4x"].available
    assert not by_name["8x"].available
    assert by_name["8x"].unavailable_reason == (
        "The output would be 422 megapixels, more than the 400 megapixels we can deliver."
    )


def test_image_not_for_sale_offers_nothing() -> None:
    result = offers(100, 100, for_sale=False, resolutions=("4x", "8x"), settings=DEFAULTS)
    assert [offer.unavailable_reason for offer in result] == ["This image is not for sale."] * 2


money = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("5"), places=3)


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 12000),
    height=st.integers(1, 12000),
    resolution=st.sampled_from(["4x", "8x"]),
    markup=st.decimals(min_value=Decimal(0), max_value=Decimal(1200), places=2),
    cost_per_credit=money,
    credits_per_mp=money,
    min_price=st.decimals(min_value=Decimal("0.50"), max_value=Decimal("5"), places=2),
    currency=st.sampled_from(["usd", "eur", "gbp"]),
)
def test_shown_charged_and_stored_amounts_agree_to_the_cent(
    width: int,
    height: int,
    resolution: str,
    markup: Decimal,
    cost_per_credit: Decimal,
    credits_per_mp: Decimal,
    min_price: Decimal,
    currency: str,
) -> None:
    settings_ = PriceSettings(markup, cost_per_credit, credits_per_mp, min_price, 100000)
    q = quote(width, height, resolution, settings_)
    shown = q.price
    unit_amount = to_minor_units(q.price, currency)
    stored = Decimal(str(q.price)).quantize(Decimal("0.01"))  # what DECIMAL(10,2) keeps
    assert shown == stored
    assert from_minor_units(unit_amount, currency) == shown
    assert unit_amount == int(shown * 100)
    assert shown >= min_price
    assert shown.as_tuple().exponent == -2
