"""The `local` engine: Lanczos3 upscaling with libvips on the worker's CPU, streamed to disk."""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

import pyvips

from worker.engines.base import PermanentUpscaleError, TransientUpscaleError, UpscaleResult
from worker.engines.imaging import image_size, vips_message

FACTORS = (2, 4, 8)

_FORMAT_OF_LOADER = {"jpegload": "jpeg", "pngload": "png", "webpload": "webp"}
_FORMAT_OF_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}
# The longest side each format can hold.
_MAX_SIDE = {"jpeg": 65_500, "png": 2**31 - 1, "webp": 16_383}
# To optimise its Huffman tables libjpeg keeps every DCT coefficient of the image (2 bytes a
# sample) until the end: 4.6 GB for a 768 MP output. Only outputs up to this many samples get it.
_OPTIMIZE_CODING_MAX_SAMPLES = 48 * 2**20

# Mild unsharp masking of lightness; m1=0 leaves flat areas (and their noise) alone.
_SHARPEN_SIGMA = 0.5
_SHARPEN = {"sigma": _SHARPEN_SIGMA, "x1": 2.0, "y2": 10.0, "y3": 20.0, "m1": 0.0, "m2": 1.0}
_SHARPENED_INTERPRETATIONS = frozenset({"srgb", "rgb16", "b-w", "grey16"})
# The side of the square of pixels the sharpening mask reads: three sigmas each way.
_SHARPEN_REACH = 2 * math.ceil(3 * _SHARPEN_SIGMA) + 1

# A multiple of every factor: see _aligned_cache.
_TILE = 128


class LocalEngine:
    """Upscales on this machine's CPU; memory stays bounded whatever the output size."""

    name = "local"

    def __init__(self) -> None:
        # Every job runs a new pipeline on new files once, so the operation cache has nothing to
        # reuse; keep it small so it cannot pin memory or file handles between jobs.
        pyvips.cache_set_max(16)
        pyvips.cache_set_max_mem(32 * 2**20)
        pyvips.cache_set_max_files(4)

    def upscale(self, source: Path, factor: int, output: Path) -> UpscaleResult:
        """Write `output`, `source` upscaled by `factor`, in the format its suffix names."""
        if factor not in FACTORS:
            raise PermanentUpscaleError(f"factor {factor} is not one of {FACTORS}")
        image, source_format = _load(source)
        output_format = _FORMAT_OF_SUFFIX.get(output.suffix.lower(), source_format)
        upscaled = upscale_image(image, factor)
        longest = max(upscaled.width, upscaled.height)
        if longest > _MAX_SIDE[output_format]:
            raise PermanentUpscaleError(
                f"{upscaled.width}×{upscaled.height} is too large for {output_format.upper()}, "
                f"which holds at most {_MAX_SIDE[output_format]} pixels a side"
            )
        lossless = output_format == "webp" and source_format == "webp" and _is_lossless_webp(source)
        try:
            _save(upscaled, output_format, output, lossless_webp=lossless)
        except (pyvips.Error, OSError) as exc:
            # The source is already decoded, so what failed is the writing (a full disk, say).
            output.unlink(missing_ok=True)
            reason = vips_message(exc) if isinstance(exc, pyvips.Error) else str(exc)
            raise TransientUpscaleError(f"could not write {output.name}: {reason}") from exc
        width, height = image_size(output)
        return UpscaleResult(width=width, height=height)


def upscale_image(image: pyvips.Image, factor: int) -> pyvips.Image:
    """Return `image` upscaled by `factor`, lazily: sharpened, Lanczos3-resampled, same format."""
    has_alpha = image.hasalpha()
    max_alpha = 65535 if image.format == "ushort" else 255
    # Sharpening at the source's scale costs 1/factor² of sharpening the output (50 s more for
    # an 8x job of 12 MP), and the resampling stretches the mask over the `factor` output
    # pixels an enlarged edge spans.
    work = _sharpen(image).cast("float")
    if has_alpha:
        # Resample colour premultiplied, or transparent pixels bleed their colour into edges.
        work = work.premultiply(max_alpha=max_alpha)
    work = lanczos3_upscale(work, factor)
    if has_alpha:
        work = work.unpremultiply(max_alpha=max_alpha)
    # Lanczos overshoots a little at hard edges; the cast clips back into range.
    return work.rint().cast(image.format).copy(interpretation=image.interpretation)


def lanczos3_upscale(image: pyvips.Image, factor: int) -> pyvips.Image:
    """Return `image` enlarged by the whole number `factor` with a separable Lanczos3 filter."""
    # libvips' resize enlarges with a bicubic interpolator whatever kernel it is given, so the
    # filter is built from convolutions. Columns are widened as the rows of the turned source;
    # the result, factor times smaller than the output, is read back by columns: each row of
    # output tiles reads one or two columns of its tiles, so four columns are kept.
    tall = _widen(image.rot90(), factor)
    tall = _aligned_cache(tall, max_tiles=4 * math.ceil(tall.height / _TILE) + 8)
    # The output is read once, tile by tile or row by row, so a few tiles are all it needs.
    return _aligned_cache(_widen(tall.rot270(), factor), max_tiles=16)


def _widen(image: pyvips.Image, factor: int) -> pyvips.Image:
    """Return `image` `factor` times wider: one filtered copy for each output phase, interleaved."""
    phases = [
        image.conv(pyvips.Image.new_from_array([list(weights)]), precision="float")
        for weights in _phase_weights(factor)
    ]
    # bandunfold lays each pixel's bands side by side: pixel x of phase p lands on x * factor + p.
    return phases[0].bandjoin(phases[1:]).bandunfold(factor=factor)


def _aligned_cache(image: pyvips.Image, max_tiles: int) -> pyvips.Image:
    """Return `image` behind a cache that reads it only in tiles aligned to any factor."""
    # bandunfold (libvips 8.18) copies the wrong pixels for a region whose left edge is not a
    # multiple of its factor. The cache asks for whole tiles on a grid of _TILE, a multiple of
    # every factor, so whatever region its readers ask for, they get the right pixels.
    return image.tilecache(
        tile_width=_TILE, tile_height=_TILE, max_tiles=max_tiles, access="random", threaded=True
    )


@cache
def _phase_weights(factor: int) -> tuple[tuple[float, ...], ...]:
    """Seven Lanczos3 taps, centred on a source pixel, for each of its `factor` output pixels."""
    phases = []
    for phase in range(factor):
        # Pixel centres line up: output pixel j samples the source at (j + 0.5) / factor - 0.5.
        offset = (phase + 0.5) / factor - 0.5
        weights = [_lanczos3(offset - tap) for tap in range(-3, 4)]
        total = sum(weights)
        phases.append(tuple(weight / total for weight in weights))
    return tuple(phases)


def _lanczos3(x: float) -> float:
    """The Lanczos kernel with three lobes."""
    if x == 0:
        return 1.0
    if abs(x) >= 3:
        return 0.0
    px = math.pi * x
    return 3 * math.sin(px) * math.sin(px / 3) / (px * px)


def _sharpen(image: pyvips.Image) -> pyvips.Image:
    """Return `image` with its lightness mildly sharpened, alpha untouched; CMYK as it is."""
    if image.interpretation not in _SHARPENED_INTERPRETATIONS:
        return image
    if not image.hasalpha():
        return image.sharpen(**_SHARPEN)
    colour = image.extract_band(0, n=image.bands - 1)
    alpha = image.extract_band(image.bands - 1)
    # The colour of (partly) transparent pixels is arbitrary: where the mask would reach one,
    # sharpening would shift the colour of its visible neighbours, so it is left unsharpened.
    max_alpha = 65535 if image.format == "ushort" else 255
    square = pyvips.Image.new_from_array([[255] * _SHARPEN_REACH] * _SHARPEN_REACH)
    opaque = (alpha == max_alpha).erode(square)
    return opaque.ifthenelse(colour.sharpen(**_SHARPEN), colour).bandjoin(alpha)


def _load(source: Path) -> tuple[pyvips.Image, str]:
    """Return `source` decoded, upright, and the name of its format."""
    if not source.is_file():
        raise PermanentUpscaleError(f"the original {source} is missing")
    try:
        image = pyvips.Image.new_from_file(
            str(source), access="sequential", fail_on="truncated", revalidate=True
        )
        loader = str(image.get("vips-loader"))
        if loader not in _FORMAT_OF_LOADER:
            raise PermanentUpscaleError(
                f"{source.name} is read by {loader}; the local engine takes JPEG, PNG and WebP"
            )
        if image.get_typeof("n-pages") and int(image.get("n-pages")) > 1:
            raise PermanentUpscaleError(f"{source.name} is animated")
        # Decode it whole now (36 MB for 12 MP of RGB): the resampler reads it by columns as well
        # as by rows, and a corrupt source fails here, as the source's fault, not mid-write.
        image = image.copy_memory()
    except pyvips.Error as exc:
        raise PermanentUpscaleError(f"{source.name} does not decode: {vips_message(exc)}") from exc
    return image.autorot(), _FORMAT_OF_LOADER[loader]


def _save(image: pyvips.Image, output_format: str, output: Path, *, lossless_webp: bool) -> None:
    """Stream `image` into `output` as `output_format`, keeping its metadata and ICC profile."""
    if output_format == "jpeg":
        image.jpegsave(str(output), **jpeg_options(image))
    elif output_format == "png":
        image.pngsave(str(output), compression=6)
    else:
        image.webpsave(str(output), Q=95, lossless=lossless_webp, smart_subsample=True)


def jpeg_options(image: pyvips.Image) -> dict[str, object]:
    """The `jpegsave` options the engine writes `image` with (benchmarks use them too)."""
    samples = image.width * image.height * image.bands
    return {
        "Q": 95,
        "subsample_mode": "off",
        "optimize_coding": samples <= _OPTIMIZE_CODING_MAX_SAMPLES,
    }


def _is_lossless_webp(path: Path) -> bool:
    """Whether the WebP file at `path` holds its image losslessly (a VP8L chunk)."""
    with path.open("rb") as file:
        file.seek(12)  # past "RIFF", the file size and "WEBP"
        while len(header := file.read(8)) == 8:
            fourcc, size = header[:4], int.from_bytes(header[4:], "little")
            if fourcc == b"VP8L":
                return True
            if fourcc in (b"VP8 ", b"ANMF"):
                return False
            file.seek(size + size % 2, os.SEEK_CUR)  # chunks are padded to an even length
    return False
