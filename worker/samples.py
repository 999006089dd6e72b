"""Making a before/after sample: the region that shows detail, upscaled by the engine and plainly.

The region is the owner's focus point if there is one, else the window of the image with the most
edge energy (Sobel magnitude of a grey copy at most REGION_SEARCH_EDGE pixels a side). The engine
is given the region with MARGIN source pixels of real neighbours around it, and the margin is
cut off its output, so the sample is exactly what the engine makes there in the whole image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips
from flask import Flask

from storefront.jobs.samples import SampleOrder, record_sample, sample_to_make
from storefront.storage import backend, temporary_path
from worker.engines import get_engine
from worker.engines.neural import centred_upscale

log = logging.getLogger("smi.samples")

REGION_SEARCH_EDGE = 512
# Source pixels of context around the region: past the neural network's 7 and Lanczos3's 3 plus
# the sharpening mask's.
MARGIN = 8
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Region:
    """A rectangle of the upright image, in source pixels."""

    left: int
    top: int
    width: int
    height: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        """(left, top, width, height)."""
        return self.left, self.top, self.width, self.height


def choose_region(
    overview: pyvips.Image,
    size: tuple[int, int],
    region: tuple[int, int],
    focus: tuple[float, float] | None = None,
) -> Region:
    """The region of `region` (width, height) source pixels to show of an upright image of
    `size` (width, height): centred on `focus` (fractions from the top left) when given, else
    where `overview`, a small upright copy of the image, has the most edge energy. Always inside.
    """
    width, height = size
    region_width, region_height = min(region[0], width), min(region[1], height)
    if focus is not None:
        centre_x, centre_y = focus[0] * width, focus[1] * height
    else:
        centre_x, centre_y = _most_detailed_centre(overview, size, (region_width, region_height))
    left = round(centre_x - region_width / 2)
    top = round(centre_y - region_height / 2)
    return Region(
        min(max(left, 0), width - region_width),
        min(max(top, 0), height - region_height),
        region_width,
        region_height,
    )


def _most_detailed_centre(
    overview: pyvips.Image, size: tuple[int, int], region: tuple[int, int]
) -> tuple[float, float]:
    """The centre, in source pixels, of the window of the region's size with most edge energy."""
    if overview.hasalpha():
        overview = overview.extract_band(0, n=overview.bands - 1)
    grey = overview.colourspace("b-w").cast("uchar") if overview.bands > 1 else overview
    edges = grey.sobel().cast("uint").numpy().astype(np.int64)
    if edges.ndim == 3:
        edges = edges[:, :, 0]
    scale_x, scale_y = overview.width / size[0], overview.height / size[1]
    window_w = min(max(1, round(region[0] * scale_x)), edges.shape[1])
    window_h = min(max(1, round(region[1] * scale_y)), edges.shape[0])
    # Sums over every window at once, from the summed-area table.
    table = np.zeros((edges.shape[0] + 1, edges.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = edges.cumsum(axis=0).cumsum(axis=1)
    sums = (
        table[window_h:, window_w:]
        - table[:-window_h, window_w:]
        - table[window_h:, :-window_w]
        + table[:-window_h, :-window_w]
    )
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return (x + window_w / 2) / scale_x, (y + window_h / 2) / scale_y


def make_sample(app: Flask, attachment_id: int, resolution: str) -> str:
    """Make, store and record the sample of an image at a resolution, if one is due."""
    order = sample_to_make(attachment_id, resolution)
    if order is None:
        return f"image {attachment_id} {resolution}: no sample to make"
    started = time.monotonic()
    storage = backend(app)
    engine_out = temporary_path(app, ".jpg")
    plain_out = temporary_path(app, ".jpg")
    try:
        with storage.local_copy(order.file_path) as source:
            overview = pyvips.Image.thumbnail(
                str(source), REGION_SEARCH_EDGE, height=REGION_SEARCH_EDGE, size="down"
            )
            loaded = pyvips.Image.new_from_file(str(source), access="random")
            is_jpeg = str(loaded.get("vips-loader")).startswith("jpeg")
            image = loaded.autorot()
            region = choose_region(
                overview, (image.width, image.height), order.region_size, order.focus
            )
            render_sample(app, image, is_jpeg, region, order, (engine_out, plain_out))
        storage.put_file(order.engine_key, engine_out, "image/jpeg")
        storage.put_file(order.plain_key, plain_out, "image/jpeg")
    finally:
        engine_out.unlink(missing_ok=True)
        plain_out.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    record_sample(app, order, region.as_tuple(), seconds)
    log.info(
        "sample of image %d at %s by %s: region %s, %.2f s",
        attachment_id,
        resolution,
        order.engine,
        region.as_tuple(),
        seconds,
    )
    return f"image {attachment_id} {resolution}: sample made by {order.engine} in {seconds:.2f} s"


def render_sample(
    app: Flask,
    image: pyvips.Image,
    is_jpeg: bool,
    region: Region,
    order: SampleOrder,
    outputs: tuple[Path, Path],
) -> None:
    """Write the engine's upscale of `region` of the upright `image` to the first of `outputs`,
    and its plain (bilinear, as a browser enlarges) enlargement to the second, both JPEG."""
    engine_out, plain_out = outputs
    factor = order.factor
    left, top = max(region.left - MARGIN, 0), max(region.top - MARGIN, 0)
    right = min(region.left + region.width + MARGIN, image.width)
    bottom = min(region.top + region.height + MARGIN, image.height)
    context = image.crop(left, top, right - left, bottom - top)
    inner = ((region.left - left) * factor, (region.top - top) * factor)
    out_size = (region.width * factor, region.height * factor)

    def cut(upscaled: pyvips.Image) -> pyvips.Image:
        return upscaled.crop(inner[0], inner[1], out_size[0], out_size[1])

    plain = centred_upscale(context, factor, interpolator="bilinear")
    _save_jpeg(cut(plain), plain_out)
    # A JPEG original is given as a JPEG (near-lossless), so the engine treats it as one (the
    # neural engine denoises JPEG sources).
    crop_in = temporary_path(app, ".jpg" if is_jpeg else ".png")
    crop_out = temporary_path(app, ".png")
    try:
        if is_jpeg:
            context.jpegsave(str(crop_in), Q=98, subsample_mode="off")
        else:
            context.pngsave(str(crop_in), compression=1)
        get_engine(order.engine, app.config).upscale(crop_in, factor, crop_out)
        upscaled = pyvips.Image.new_from_file(str(crop_out), access="random")
        _save_jpeg(cut(upscaled), engine_out)
    finally:
        crop_in.unlink(missing_ok=True)
        crop_out.unlink(missing_ok=True)


def _save_jpeg(image: pyvips.Image, output: Path) -> None:
    """Save as an 8-bit sRGB (or grey) JPEG, transparency flattened onto white."""
    if image.interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("b-w" if image.bands in (1, 2) else "srgb")
    if image.hasalpha():
        image = image.flatten(background=[255])
    image.cast("uchar").jpegsave(
        str(output), Q=JPEG_QUALITY, strip=True, optimize_coding=True, interlace=True
    )
