"""Before/after samples: what each resolution of an image will look like, before paying.

A sample is one region of the image upscaled by the engine that would make the buyer's file,
beside the same region enlarged plainly. The region is at most a quarter of the width and of the
height (so at most 1/16 of the image) and at most SAMPLE_EDGE output pixels a side. Samples are
made by a worker on the low-priority `samples` queue (worker/samples.py), never in a request,
once per image, resolution and engine; the image's fingerprint (its original and focus point)
makes a changed image get new ones. A page knows which are ready from `image_samples`, read once
per catalog version (recording a sample bumps it).

Upsampler.com gets no samples: each would spend paid credits on images nobody may buy, and
another engine's output would show something the buyer does not get.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import select

from storefront import transactions
from storefront.catalog.library import (
    CatalogImage,
    ReadySample,
    attachment_fingerprint,
    image_for_page,
    ready_samples,
    sample_keys,
)
from storefront.catalog.pricing import FACTORS, Offer
from storefront.extensions import db
from storefront.jobs.offers import image_offers
from storefront.jobs.queueing import enqueue_sample, sample_rq_id
from storefront.models import Attachment, ImageSample, utcnow
from storefront.queues import versions
from storefront.storage import remove_stored_file

SAMPLE_EDGE = 1024  # output pixels a side, at most
SAMPLE_ENGINES = ("local", "neural")
# A page that finds a sample missing asks for it at most this often per process and sample.
ASK_AGAIN_SECONDS = 30
ASKS_KEPT = 10_000


@dataclass(frozen=True)
class SampleView:
    """What an image page shows for one resolution: a ready sample, or that one is coming."""

    resolution: str
    engine: str
    ready: ReadySample | None

    @property
    def factor(self) -> int:
        """The upscale factor."""
        return FACTORS[self.resolution]


@dataclass(frozen=True)
class SampleOrder:
    """What a worker needs to make one sample."""

    attachment_id: int
    resolution: str
    factor: int
    engine: str
    fingerprint: str
    file_path: str
    width: int
    height: int
    focus: tuple[float, float] | None
    engine_key: str
    plain_key: str

    @property
    def region_size(self) -> tuple[int, int]:
        """The region's width and height in source pixels."""
        return region_size(self.width, self.height, self.factor)


def region_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """A sample's region for a `width` x `height` image at `factor`: at most a quarter of each
    side (1/16 of the image) and at most SAMPLE_EDGE output pixels a side."""
    edge = SAMPLE_EDGE // factor
    return min(edge, width // 4), min(edge, height // 4)


def sample_engine(offer: Offer, width: int, height: int) -> str | None:
    """The engine a resolution's sample is made by, or None when it gets none (not offered,
    made by Upsampler.com, or an image under 4 pixels a side, which has no 1/16 to show)."""
    if offer.available and offer.engine in SAMPLE_ENGINES and min(width, height) >= 4:
        return offer.engine
    return None


def _current(
    image: CatalogImage, found: Sequence[ReadySample], resolution: str, engine: str
) -> ReadySample | None:
    return next(
        (
            sample
            for sample in found
            if sample.resolution == resolution
            and sample.engine == engine
            and sample.fingerprint == image.fingerprint
        ),
        None,
    )


def page_samples(app: Flask, image: CatalogImage, offers: Sequence[Offer]) -> list[SampleView]:
    """The samples an image page shows, one per available resolution with a sample engine; a
    missing one is asked for (queued, never made here)."""
    found = ready_samples(app, image.id)
    # Redis unreachable (the request's version counters say so): asking would only wait.
    redis_up = versions(app) is not None
    views = []
    for offer in offers:
        engine = sample_engine(offer, image.width, image.height)
        if engine is None:
            continue
        ready = _current(image, found, offer.quote.resolution, engine)
        if ready is None and redis_up:
            ask_for_sample(app, image, offer.quote.resolution, engine)
        views.append(SampleView(offer.quote.resolution, engine, ready))
    return views


def sample_for(app: Flask, attachment_id: int, resolution: str) -> ReadySample | None:
    """The ready sample of an image at a resolution, made by today's engine from today's image;
    None while there is none."""
    image = image_for_page(app, attachment_id)
    if image is None or resolution not in FACTORS:
        return None
    offer = next((o for o in image_offers(image) if o.quote.resolution == resolution), None)
    engine = sample_engine(offer, image.width, image.height) if offer else None
    if engine is None:
        return None
    return _current(image, ready_samples(app, attachment_id), resolution, engine)


def ask_for_sample(app: Flask, image: CatalogImage, resolution: str, engine: str) -> bool:
    """Queue a missing sample, unless this process asked for the same one (same engine, same
    image) a moment ago: a page view's request."""
    asks: dict[tuple[str, str, str], float] = app.extensions.setdefault("smi_sample_asks", {})
    ask = (sample_rq_id(image.id, resolution), engine, image.fingerprint)
    now = time.monotonic()
    if now - asks.get(ask, -ASK_AGAIN_SECONDS) < ASK_AGAIN_SECONDS:
        return False
    if len(asks) >= ASKS_KEPT:
        asks.clear()
    asks[ask] = now
    return enqueue_sample(image.id, resolution)


def queue_samples(attachment_id: int) -> int:
    """Queue the samples of an image at every resolution (it was published or changed); how many
    were queued. The task decides whether there is anything to make."""
    return sum(enqueue_sample(attachment_id, resolution) for resolution in FACTORS)


def queue_missing_samples(app: Flask) -> int:
    """Queue every sample the image pages would show and that is not made yet; how many."""
    queued = 0
    for attachment_id in db.session.scalars(
        select(Attachment.id).where(Attachment.for_sale.is_(True)).order_by(Attachment.id)
    ):
        image = image_for_page(app, attachment_id)
        if image is None:
            continue
        found = ready_samples(app, attachment_id)
        for offer in image_offers(image):
            engine = sample_engine(offer, image.width, image.height)
            resolution = offer.quote.resolution
            if engine is not None and _current(image, found, resolution, engine) is None:
                queued += enqueue_sample(attachment_id, resolution)
    return queued


def sample_to_make(attachment_id: int, resolution: str) -> SampleOrder | None:
    """What to make for this image and resolution now, or None: the image is gone or not for
    sale, the resolution gets no sample, or its sample is made already."""
    attachment = db.session.get(Attachment, attachment_id)
    if attachment is None or resolution not in FACTORS:
        return None
    offer = next((o for o in image_offers(attachment) if o.quote.resolution == resolution), None)
    engine = sample_engine(offer, attachment.width, attachment.height) if offer else None
    if engine is None:
        return None
    fingerprint = attachment_fingerprint(attachment)
    existing = _sample_row(attachment_id, resolution, engine)
    if existing is not None and existing.fingerprint == fingerprint:
        return None
    focus = None
    if attachment.focus_x is not None and attachment.focus_y is not None:
        focus = (attachment.focus_x, attachment.focus_y)
    engine_key, plain_key = sample_keys(attachment_id, resolution, engine, fingerprint)
    return SampleOrder(
        attachment_id=attachment_id,
        resolution=resolution,
        factor=FACTORS[resolution],
        engine=engine,
        fingerprint=fingerprint,
        file_path=attachment.file_path,
        width=attachment.width,
        height=attachment.height,
        focus=focus,
        engine_key=engine_key,
        plain_key=plain_key,
    )


def _sample_row(attachment_id: int, resolution: str, engine: str) -> ImageSample | None:
    return db.session.scalar(
        select(ImageSample).where(
            ImageSample.attachment_id == attachment_id,
            ImageSample.resolution == resolution,
            ImageSample.engine == engine,
        )
    )


def record_sample(
    app: Flask, order: SampleOrder, region: tuple[int, int, int, int], seconds: float
) -> None:
    """Record a made sample (its files are stored); the one it replaces is removed after the
    commit. Commits."""
    left, top, width, height = region
    row = _sample_row(order.attachment_id, order.resolution, order.engine)
    replaced: list[str] = []
    if row is None:
        row = ImageSample(
            attachment_id=order.attachment_id, resolution=order.resolution, engine=order.engine
        )
        db.session.add(row)
    else:
        replaced = [
            key
            for key in (row.engine_key, row.plain_key)
            if key not in (order.engine_key, order.plain_key)
        ]
    row.fingerprint = order.fingerprint
    row.region_left, row.region_top, row.region_width, row.region_height = left, top, width, height
    row.engine_key, row.plain_key = order.engine_key, order.plain_key
    row.seconds = round(seconds, 3)
    row.made_at = utcnow()
    transactions.commit(*(lambda key=key: remove_stored_file(app, key) for key in replaced))
