"""What an image page offers: each resolution's price, and the engine that would upscale it."""

from __future__ import annotations

import dataclasses

from storefront import settings
from storefront.catalog.pricing import FACTORS, Offer, PriceSettings, offers
from storefront.jobs.estimates import engine_for, neural_seconds
from storefront.models import Attachment

ENGINE_LABELS = {
    "neural": "AI upscaling (neural network, on our own servers)",
    "upsampler": "AI upscaling by Upsampler.com",
    "local": "High-quality Lanczos resampling with sharpening",
}


def image_offers(attachment: Attachment) -> list[Offer]:
    """Every resolution of an image, priced, with its engine or the reason it is not offered."""
    config = settings.current()
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
                unavailable_reason=(
                    f"Too large for AI upscaling here: it would take about {minutes:.0f} minutes."
                ),
            )
        result.append(dataclasses.replace(offer, engine=engine or ""))
    return result


def offer_for(attachment: Attachment, resolution: str) -> Offer:
    """The offer of one resolution of an image (KeyError for an unknown resolution)."""
    if resolution not in FACTORS:
        raise KeyError(resolution)
    return next(o for o in image_offers(attachment) if o.quote.resolution == resolution)
