"""Neural upscaling: waifu2x "photo" UpConv7 models run on the CPU by ncnn.

Each 2x pass runs the network over the image in exact-context tiles: a tile of T x T pixels is fed
with PREPADDING pixels of real neighbours (edge pixels repeated at the image border) on every side,
and the network's unpadded convolutions consume exactly that margin, so each tile's 2T x 2T output
is what one run over the whole image would give there. Tiles meet without seams, nothing is
blended. Passes read and write raw RGB rows in temporary files beside the output, one band of tiles
at a time, and libvips streams the last one, enlarged by the local engine's Lanczos3 where the
plan says, into the encoder. So memory hardly grows with the image: peak RSS 378 MiB for 4x of
4 MP (PNG), 403 MiB for 8x of 1.5 MP, 509 MiB for 4x of 16 MP (bench/quality_bench.py --tiers),
most of it ncnn's buffers for one tile of up to 192 pixels a side.

Measured with bench/quality_bench.py on the five demo photos, downscaled 4x with libvips lanczos3
and upscaled back, mean luminance PSNR / SSIM: local engine 27.84 dB / 0.777, this engine
28.86 dB / 0.807.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

from storefront.jobs.estimates import NEURAL_PASSES
from storefront.jobs.estimates import neural_seconds as estimate_seconds
from worker.engines.base import PermanentUpscaleError, TransientUpscaleError, UpscaleResult
from worker.engines.imaging import vips_message
from worker.engines.local import lanczos3_upscale

log = logging.getLogger(__name__)

MODEL_DIR = Path(__file__).resolve().parent / "models" / "waifu2x"
UPSCALE_MODEL = "WAIFU2X_PHOTO_UP2X"
# JPEG inputs get the denoising variant on the first pass. Level 2 measured best or within 0.1 dB
# of best from JPEG quality 60 to 95 (mean luminance PSNR on the demo photos, 4x):
#   quality  no-denoise  denoise0  denoise1  denoise2  denoise3
#   60       26.38       26.76     27.25     27.32     27.37
#   75       26.99       27.43     27.69     27.74     27.76
#   90       28.25       28.51     28.41     28.44     28.16
#   95       28.89       29.01     28.91     28.88     28.25
DENOISE_MODEL = "WAIFU2X_PHOTO_UP2X_DENOISE2X"
MODEL_SHA256: dict[str, str] = {
    "WAIFU2X_PHOTO_UP2X.param": "66da0db6342450b9c9c5dd1a05d20245bec4dca7878b8b57ca7bcfc5be1807c9",
    "WAIFU2X_PHOTO_UP2X.bin": "25a2bb25b29e43e63179aac216cd87690791243a436328506d4ef9fca88ee962",
    "WAIFU2X_PHOTO_UP2X_DENOISE2X.param": (
        "66da0db6342450b9c9c5dd1a05d20245bec4dca7878b8b57ca7bcfc5be1807c9"
    ),
    "WAIFU2X_PHOTO_UP2X_DENOISE2X.bin": (
        "432ca8f62ffc4873794a399ded70b17af23aa870b25e5ddba76f029b7ce14c2b"
    ),
}
INPUT_BLOB = "Input1"
OUTPUT_BLOB = "Eltwise4"
# Six unpadded 3x3 convolutions take 12 pixels off each dimension and the stride-2 deconvolution
# (kernel 4, padding 3) gives 2n - 4 for n, so an input of T + 2 * 7 comes out exactly 2T.
PREPADDING = 7
DEFAULT_TILE_SIZE = 192
# Blur radius that carries visible colour into transparent pixels: past the network's 7-pixel reach.
BLEED_SIGMA = 4.0

JPEG_QUALITY = 95  # as the local engine
# Formats written, with the largest side each can hold.
OUTPUT_LIMITS: dict[str, int] = {
    ".jpg": 65_535,
    ".jpeg": 65_535,
    ".png": 2**31 - 1,
    ".webp": 16_383,
}


@dataclass(frozen=True)
class _Plan:
    """How a factor is reached: network 2x passes, then a Lanczos3 enlargement by `resample`."""

    passes: int
    resample: int


# A pass costs four times the one before it (it takes in twice the width and height), so each
# factor has as few as its quality needs, and a Lanczos3 enlargement (the local engine's, on the
# network's pixel grid) does the rest. The demo photos downscaled 4x or 8x and upscaled back
# (bench/quality_bench.py), mean luminance PSNR and SSIM, and network work in units of a pass over
# the input:
#   4x  two passes                      28.89 dB  0.809  5 units
#   4x  one pass + Lanczos3 2x          28.86 dB  0.807  1 unit   (bicubic 2x: 28.84 dB)
#   8x  three passes                    25.91 dB  0.716  21 units
#   8x  two passes + Lanczos3 2x        25.96 dB  0.716  5 units  (bicubic 2x: 25.96 dB)
#   8x  one pass + Lanczos3 4x          25.92 dB  0.713  1 unit
# 4x takes one pass (0.03 dB for a fifth of the work); 8x keeps two, as one would lose 0.05 dB.
PLANS: dict[int, _Plan] = {
    factor: _Plan(passes, factor // 2**passes) for factor, passes in NEURAL_PASSES.items()
}


def neural_model_status(model_dir: Path | None = None) -> tuple[bool, str]:
    """Whether ncnn imports and the model files verify, with a line saying which or why not."""
    try:
        import ncnn
    except ImportError as exc:
        return False, f"ncnn is not installed ({exc}); pip install ncnn"
    directory = model_dir or MODEL_DIR
    try:
        for name in MODEL_SHA256:
            _verify_model_file(directory / name)
    except PermanentUpscaleError as exc:
        return False, str(exc)
    return True, f"ncnn {getattr(ncnn, '__version__', '?')}; waifu2x photo models verified"


def _plan_for(factor: int) -> _Plan:
    """The plan for `factor`, or a PermanentUpscaleError for a factor this engine does not offer."""
    try:
        return PLANS[factor]
    except KeyError:
        raise PermanentUpscaleError(
            f"the neural engine upscales by {', '.join(map(str, PLANS))}, not {factor}"
        ) from None


def _verify_model_file(path: Path) -> None:
    """Raise PermanentUpscaleError unless `path` exists and has its recorded SHA-256."""
    expected = MODEL_SHA256.get(path.name)
    if expected is None:
        raise PermanentUpscaleError(f"no checksum is recorded for model file {path}")
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise PermanentUpscaleError(f"model file {path} is missing") from None
    except OSError as exc:
        raise TransientUpscaleError(f"could not read model file {path}: {exc}") from exc
    if digest != expected:
        raise PermanentUpscaleError(
            f"model file {path} is corrupt: SHA-256 {digest}, expected {expected}"
        )


class NeuralEngine:
    """Upscales with waifu2x photo models on the CPU, 2x per network pass."""

    name = "neural"

    def __init__(
        self,
        model_dir: Path | None = None,
        threads: int | None = None,
        tile_size: int = DEFAULT_TILE_SIZE,
    ) -> None:
        if tile_size < 8:
            raise ValueError(f"tile_size must be at least 8, not {tile_size}")
        self.model_dir = model_dir or MODEL_DIR
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.tile_size = tile_size
        # The allocators must outlive the networks that use them: keep this order.
        self._nets: dict[str, Any] = {}
        self._allocators: tuple[Any, Any] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NeuralEngine:
        """Build the engine from settings: NEURAL_THREADS (default: the number of CPUs)."""
        threads = config.get("NEURAL_THREADS")
        return cls(threads=int(threads) if threads else None)

    @staticmethod
    def available() -> bool:
        """Whether ncnn imports and the bundled model files verify."""
        return neural_model_status()[0]

    @staticmethod
    def estimate_seconds(width: int, height: int, factor: int) -> float:
        """Seconds expected for a `width` x `height` input at `factor` (see module estimate)."""
        return estimate_seconds(width, height, factor)

    def upscale(self, source: Path, factor: int, output: Path) -> UpscaleResult:
        """Write `output`, `source` upscaled by `factor`, in the source's format."""
        started = time.monotonic()
        plan = _plan_for(factor)
        image = _load_source(source)
        first_model = (
            DENOISE_MODEL if image.get("vips-loader").startswith("jpeg") else UPSCALE_MODEL
        )
        _check_output(output, image.width * factor, image.height * factor)
        colour, alpha, grey, icc = _split_for_network(image, _icc_profile(image))
        try:
            with tempfile.TemporaryDirectory(prefix=".neural-", dir=output.parent) as tmp:
                try:
                    rgb = self._network_passes(colour, plan.passes, first_model, Path(tmp))
                    rgb = _enlarge(rgb, plan.resample)
                    result = _reassemble(rgb, grey, alpha, factor, icc)
                    _save(result, output)
                finally:
                    _drop_vips_cache()
        except (OSError, pyvips.Error) as exc:
            # The source decoded already: what failed is the disk or the memory, not the image.
            output.unlink(missing_ok=True)
            reason = vips_message(exc) if isinstance(exc, pyvips.Error) else str(exc)
            raise TransientUpscaleError(
                f"neural upscale of {source.name} failed: {reason}"
            ) from exc
        log.info(
            "neural upscale of %s (%dx%d) by %d, first pass %s, took %.1f s",
            source.name,
            colour.width,
            colour.height,
            factor,
            first_model,
            time.monotonic() - started,
        )
        return UpscaleResult(width=result.width, height=result.height)

    def _network_passes(self, colour: Any, passes: int, first_model: str, tmp: Path) -> Any:
        """Run `passes` network 2x passes over 8-bit RGB `colour` through raw files in `tmp`."""
        width, height = colour.width, colour.height
        current = tmp / "pass0.raw"
        colour.rawsave(str(current))
        for index in range(passes):
            following = tmp / f"pass{index + 1}.raw"
            net = self._net(first_model if index == 0 else UPSCALE_MODEL)
            try:
                self._run_pass(net, current, width, height, following)
            finally:
                # Each pass has its own tile shape: give its buffers back rather than keep them
                # beside the next pass's, or beside the encoder's after the last.
                for allocator in self._allocators or ():
                    allocator.clear()
            current.unlink()
            current, width, height = following, width * 2, height * 2
        return pyvips.Image.rawload(str(current), width, height, 3).copy(interpretation="srgb")

    def _net(self, model: str) -> Any:
        """The loaded ncnn network `model`, verified against its checksum on first use."""
        if model not in self._nets:
            import ncnn

            param, weights = self.model_dir / f"{model}.param", self.model_dir / f"{model}.bin"
            _verify_model_file(param)
            _verify_model_file(weights)
            net = ncnn.Net()
            net.opt.num_threads = self.threads
            net.opt.use_vulkan_compute = False
            # Pooled buffers are reused from tile to tile; ncnn's default allocator goes through
            # malloc, whose heap fragments to several times the working set over a large image.
            if self._allocators is None:
                self._allocators = (ncnn.PoolAllocator(), ncnn.PoolAllocator())
            net.opt.blob_allocator, net.opt.workspace_allocator = self._allocators
            if net.load_param(str(param)) != 0:
                raise PermanentUpscaleError(f"ncnn could not load model file {param}")
            if net.load_model(str(weights)) != 0:
                raise PermanentUpscaleError(f"ncnn could not load model file {weights}")
            self._nets[model] = net
        return self._nets[model]

    def _run_pass(self, net: Any, source: Path, width: int, height: int, output: Path) -> None:
        """Upscale the raw RGB rows in `source` by 2 into `output`, one band of tiles at a time."""
        pad = PREPADDING
        row_bytes = width * 3
        with source.open("rb") as reader, output.open("wb") as writer:
            for y0, y1, wy0 in _tiles(height, self.tile_size):
                top, bottom = max(wy0 - pad, 0), min(y1 + pad, height)
                reader.seek(top * row_bytes)
                data = reader.read((bottom - top) * row_bytes)
                if len(data) != (bottom - top) * row_bytes:
                    raise TransientUpscaleError(f"short read from {source}")
                rows = np.frombuffer(data, dtype=np.uint8).reshape(bottom - top, width, 3)
                margins = ((pad - (wy0 - top), pad - (bottom - y1)), (pad, pad), (0, 0))
                band = np.pad(rows, margins, mode="edge")
                planar = band.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
                out = np.empty((2 * (y1 - y0), 2 * width, 3), dtype=np.uint8)
                for x0, x1, wx0 in _tiles(width, self.tile_size):
                    result = _infer(net, planar[:, :, wx0 : x1 + 2 * pad])
                    out[:, 2 * x0 : 2 * x1] = result[2 * (y0 - wy0) :, 2 * (x0 - wx0) :]
                writer.write(out.data)


def _tiles(length: int, tile: int) -> list[tuple[int, int, int]]:
    """Tiles along one side: (start, end, window start), as even as the side allows.

    The side is cut into as few tiles as `tile` allows, all of one size, and the last window is
    moved back to that full size (its few pixels of overlap with the one before are computed
    twice and written once). So every network run has the same shape, which ncnn's pooled
    buffers fit, and no thin tile pays the margin's full cost for a few pixels.
    """
    count = -(-length // tile)
    size = -(-length // count)
    return [
        (start, min(start + size, length), max(min(start, length - size), 0))
        for start in range(0, length, size)
    ]


def _infer(net: Any, tile: np.ndarray) -> np.ndarray:
    """Run the network on one planar float tile with its margin; return the 2x tile, HxWx3 bytes."""
    import ncnn

    # ncnn.Mat wraps this buffer without copying it: `data` must stay referenced until extract
    # has run, or the network reads freed memory and writes garbage.
    data = np.ascontiguousarray(tile)
    mat = ncnn.Mat(data)
    extractor = net.create_extractor()
    extractor.input(INPUT_BLOB, mat)
    status, out = extractor.extract(OUTPUT_BLOB)
    if status != 0:
        raise TransientUpscaleError(f"ncnn inference failed with status {status}")
    result = np.array(out)
    expected = (3, 2 * (tile.shape[1] - 2 * PREPADDING), 2 * (tile.shape[2] - 2 * PREPADDING))
    if result.shape != expected:
        raise PermanentUpscaleError(f"the model gave a {result.shape} tile, expected {expected}")
    del data, mat
    return (np.clip(result, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def _enlarge(rgb: Any, factor: int) -> Any:
    """8-bit RGB enlarged by `factor` with the local engine's Lanczos3, on the network's grid."""
    if factor == 1:
        return rgb
    upscaled = lanczos3_upscale(rgb.cast("float"), factor)
    # Lanczos overshoots a little at hard edges; the cast clips back into range.
    return upscaled.rint().cast("uchar").copy(interpretation="srgb")


def centred_upscale(image: Any, factor: int, interpolator: str = "bicubic") -> Any:
    """Enlarge by `factor` as libvips' lanczos3 `resize` does, on the grid the network uses
    (or with another libvips interpolator: "bilinear" is a browser's plain enlargement).

    For enlarging, `resize(f, kernel="lanczos3")` is exactly `affine` with the bicubic interpolator
    (identical pixels), but it samples output pixel j at input j/f - 1/2: half an output pixel off
    the centre convention (j + 1/2)/f - 1/2 that the network and box or lanczos downscales use.
    Shifting it back was worth 0.24 dB on the final 2x of the 8x plan, when that used it.
    """
    if factor == 1:
        return image
    shift = 0.5 - 0.5 / factor
    return image.affine(
        [factor, 0, 0, factor],
        interpolate=pyvips.Interpolate.new(interpolator),
        idx=shift,
        idy=shift,
        oarea=[0, 0, image.width * factor, image.height * factor],
        extend="copy",
    )


def _reassemble(rgb: Any, grey: bool, alpha: Any, factor: int, icc: bytes | None) -> Any:
    """Turn the upscaled RGB back into the source's kind: grey or colour, alpha, ICC profile."""
    if grey:
        rgb = rgb.bandmean().copy(interpretation="b-w")
    if alpha is not None:
        rgb = rgb.bandjoin(centred_upscale(alpha, factor))
    if icc is not None:
        rgb = rgb.copy()
        rgb.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
    return rgb


def _drop_vips_cache() -> None:
    """Empty libvips' operation cache, which would keep the deleted temporary files open."""
    size = pyvips.cache_get_max()
    pyvips.cache_set_max(0)
    pyvips.cache_set_max(size)


def _load_source(source: Path) -> Any:
    """Decode `source` upright (EXIF orientation applied), or raise PermanentUpscaleError."""
    if not source.is_file():
        raise PermanentUpscaleError(f"source image {source} does not exist")
    try:
        # Revalidate: a retried job may have rewritten the same path since libvips cached it.
        image = pyvips.Image.new_from_file(str(source), fail_on="truncated", revalidate=True)
        if image.get_typeof("n-pages") and int(image.get("n-pages")) > 1:
            raise PermanentUpscaleError(f"{source.name} is animated")
        # Decode now, so that a damaged file fails here and not halfway through the passes.
        return image.autorot().copy_memory()
    except pyvips.Error as exc:
        raise PermanentUpscaleError(f"{source.name} does not decode: {vips_message(exc)}") from exc


def _icc_profile(image: Any) -> bytes | None:
    """The embedded ICC profile of `image`, if any."""
    if image.get_typeof("icc-profile-data") == 0:
        return None
    return bytes(image.get("icc-profile-data"))


def _split_for_network(image: Any, icc: bytes | None) -> tuple[Any, Any, bool, bytes | None]:
    """Split `image` into 8-bit RGB for the network, its alpha, whether it is grey, its profile."""
    alpha = None
    if image.hasalpha():
        alpha = image[image.bands - 1]
        image = image.extract_band(0, n=image.bands - 1)
    interpretation = image.interpretation
    grey = image.bands == 1
    if grey:
        if image.format != "uchar":
            image = image.colourspace("b-w")
        image = image.bandjoin([image, image])
    elif interpretation != "srgb" or image.bands != 3 or image.format != "uchar":
        if interpretation not in ("srgb", "rgb16"):
            icc = None  # a CMYK or Lab profile no longer describes the sRGB pixels
        image = image.colourspace("srgb")
    image = image.cast("uchar")
    if alpha is None:
        return image, None, grey, icc
    alpha = (alpha / 257 if alpha.format == "ushort" else alpha).cast("uchar")
    return _bleed_into_transparent(image, alpha), alpha, grey, icc


def _bleed_into_transparent(colour: Any, alpha: Any) -> Any:
    """Give fully transparent pixels the colour of their visible neighbours.

    Their stored colour (often black) is arbitrary, and the network, reading 7 pixels around
    each one, would blend it into the semi-transparent edge: a dark fringe round a cut-out.
    """
    weight = alpha.cast("float") / 255
    spread = (colour.cast("float") * weight).gaussblur(BLEED_SIGMA)
    reach = weight.gaussblur(BLEED_SIGMA)
    filled = (reach > 1e-3).ifthenelse(spread / reach.maxpair(1e-3), colour)
    return (alpha == 0).ifthenelse(filled.cast("uchar"), colour)


def _check_output(output: Path, width: int, height: int) -> None:
    """Raise PermanentUpscaleError if `output` cannot be written in its format at this size."""
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_LIMITS:
        raise PermanentUpscaleError(f"the neural engine cannot write {suffix or 'no suffix'} files")
    if max(width, height) > OUTPUT_LIMITS[suffix]:
        raise PermanentUpscaleError(
            f"{width}x{height} is larger than a {suffix} file can hold ({OUTPUT_LIMITS[suffix]})"
        )


def _save(image: Any, output: Path) -> None:
    """Encode `image` to `output` by suffix: JPEG (quality 95, 4:4:4), PNG or WebP."""
    suffix = output.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        if image.hasalpha():
            image = image.flatten(background=[255])
        # No optimize_coding: libjpeg would hold every coefficient of the image in memory for it.
        image.jpegsave(str(output), Q=JPEG_QUALITY, subsample_mode="off", keep="icc")
    elif suffix == ".png":
        image.pngsave(str(output), compression=6, keep="icc")
    else:
        image.webpsave(str(output), Q=JPEG_QUALITY, smart_subsample=True, keep="icc")
