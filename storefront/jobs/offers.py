"""What an image page offers: each resolution's price, and the engine that would upscale it.

The offers of an image depend only on its size and whether it is for sale, and on the settings in
force: they are computed once per image and settings generation, and kept per app.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from flask import current_app
from flask_babel import lazy_gettext as _l

from storefront import settings
from storefront.catalog.pricing import FACTORS, Offer, PriceSettings, offers
from storefront.jobs.estimates import engine_for, neural_seconds
from storefront.models import Attachment

OFFERS_CACHE_SIZE = 10_000  # entries per app; the cache starts again when it is full


class OfferedImage(Protocol):
    """What offers are computed from: an Attachment, or the image page's copy of one."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def for_sale(self) -> bool: ...


# Translated when shown: the offers are kept per app, whatever the language of the page.
ENGINE_LABELS = {
    "neural": _l("AI upscaling (neural network, on our own servers)"),
    "upsampler": _l("AI upscaling by Upsampler.com"),
    "local": _l("High-quality Lanczos resampling with sharpening"),
}


def image_offers(attachment: OfferedImage) -> list[Offer]:
    """Every resolution of an image, priced, with its engine or the reason it is not offered."""
    config = settings.current()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cache: dict[tuple[Any, ...], list[Offer]] = app.extensions.setdefault("smi_offers", {})
    key = (settings.generation(app), attachment.width, attachment.height, attachment.for_sale)
    found = cache.get(key)
    if found is None:
        if len(cache) >= OFFERS_CACHE_SIZE:
            cache.clear()
        found = cache[key] = _compute_offers(attachment, config)
    return list(found)


def _compute_offers(attachment: OfferedImage, config: Mapping[str, Any]) -> list[Offer]:
    result = []
    for offer in offers(
        attachment.width,
        attachment.height,
        for_sale=attachment.for_sale,
        resolutions=tuple(config["RESOLUTIONS"]),
        settings=PriceSettings.from_config(config),
    ):
        engine = engine_for(attachment.width, attachment.height, offer.quote.factor, config)
        if engine is None and offer.available:
            minutes = neural_seconds(attachment.width, attachment.height, offer.quote.factor) / 60
            offer = dataclasses.replace(
                offer,
                unavailable_reason=_l(
                    "Too large for AI upscaling here: it would take about %(minutes)s minutes.",
                    minutes=format(minutes, ".0f"),
                ),
            )
        result.append(dataclasses.replace(offer, engine=engine or ""))
    return result


def offer_for(attachment: Attachment, resolution: str) -> Offer:
    """The offer of one resolution of an image (KeyError for an unknown resolution)."""
    if resolution not in FACTORS:
        raise KeyError(resolution)
    return next(o for o in image_offers(attachment) if o.quote.resolution == resolution)
