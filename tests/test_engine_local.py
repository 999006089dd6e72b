"""The local engine: Lanczos3 with libvips, in the source's format, bounded in memory."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pyvips
from PIL import Image, ImageCms, ImageDraw
from PIL.JpegImagePlugin import JpegImageFile

from worker.engines import PermanentUpscaleError, TransientUpscaleError, get_engine
from worker.engines.imaging import image_size
from worker.engines.local import LocalEngine, lanczos3_upscale

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.png"
EXIF_ORIENTATION = 0x0112

# Measured: 26.13 dB here; libvips' own resize (bicubic) gets 25.26, Pillow's bicubic 25.78,
# nearest-neighbour 23.41.
MIN_PSNR = 25.9
MIN_GAIN_OVER_NEAREST = 2.0


@pytest.fixture
def engine() -> LocalEngine:
    """The engine as the worker builds it."""
    engine = get_engine("local")
    assert isinstance(engine, LocalEngine)
    return engine


@pytest.fixture
def photo() -> Image.Image:
    """A 96x64 crop of a real photograph, in RGB."""
    with Image.open(ASTRONAUT) as image:
        return image.convert("RGB").crop((150, 40, 246, 104))


@pytest.fixture
def srgb_profile() -> bytes:
    """An sRGB ICC profile, as Pillow's littlecms builds it."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def translucent(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    """An RGBA disc of one colour, opaque in the middle, fading, then cut off sharply."""
    distance = Image.radial_gradient("L").resize(size)
    alpha = distance.point(lambda d: 255 - d if d < 160 else 0)
    # The clear pixels around it carry another colour, which must not bleed into the disc.
    image = Image.new("RGBA", size, (0, 255, 0, 0))
    image.paste(Image.new("RGBA", size, (*colour, 255)), mask=alpha.point(lambda a: 255 * (a > 0)))
    image.putalpha(alpha)
    return image


def vips(path: Path) -> pyvips.Image:
    """The image at `path`, read afresh."""
    return pyvips.Image.new_from_file(str(path), revalidate=True)


def near(pixel: object, colour: tuple[int, ...], tolerance: int = 40) -> bool:
    """Whether a Pillow pixel is within `tolerance` of `colour` in every band."""
    assert isinstance(pixel, tuple)
    return all(abs(value - want) <= tolerance for value, want in zip(pixel, colour, strict=True))


def pillow_lanczos3(band: pyvips.Image, size: tuple[int, int]) -> pyvips.Image:
    """One 8-bit band resized by Pillow's Lanczos3, in floating point, as a float vips image."""
    pillow = Image.frombytes("L", (band.width, band.height), band.write_to_memory())
    resized = pillow.convert("F").resize(size, Image.Resampling.LANCZOS)
    return pyvips.Image.new_from_memory(resized.tobytes(), *size, 1, "float")


def luminance_psnr(a: Path, b: Path) -> float:
    """PSNR of the Rec. 601 luminance of two RGB images of one size, in dB."""
    weights = pyvips.Image.new_from_array([[0.299, 0.587, 0.114]])
    luma_a, luma_b = (vips(p).cast("float").recomb(weights) for p in (a, b))
    mse = ((luma_a - luma_b) ** 2).avg()
    return 10 * math.log10(255**2 / mse)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_jpeg_comes_out_as_jpeg_exactly_factor_times_larger(
    engine: LocalEngine, photo: Image.Image, tmp_path: Path, factor: int
) -> None:
    photo.save(tmp_path / "in.jpg", quality=92)
    result = engine.upscale(tmp_path / "in.jpg", factor, tmp_path / "out.jpg")

    assert (result.width, result.height) == (96 * factor, 64 * factor)
    with Image.open(tmp_path / "out.jpg") as out:
        assert isinstance(out, JpegImageFile)
        assert out.size == (96 * factor, 64 * factor)
        assert {(h, v) for _, h, v, _ in out.layer} == {(1, 1)}  # no chroma subsampling


def test_png_keeps_its_alpha(engine: LocalEngine, tmp_path: Path) -> None:
    source = translucent((64, 48), (200, 30, 60))
    source.save(tmp_path / "in.png")
    engine.upscale(tmp_path / "in.png", 4, tmp_path / "out.png")

    out = vips(tmp_path / "out.png")
    assert out.get("vips-loader") == "pngload"
    assert (out.width, out.height, out.bands, out.format) == (256, 192, 4, "uchar")
    alpha = source.getchannel("A").convert("F").resize((256, 192), Image.Resampling.LANCZOS)
    expected = pyvips.Image.new_from_memory(alpha.tobytes(), 256, 192, 1, "float")
    error = (out[3] - expected.rint().cast("uchar").cast("float")).abs()
    assert error.avg() < 0.05
    assert error.max() <= 1


def test_translucent_pixels_keep_their_colour(engine: LocalEngine, tmp_path: Path) -> None:
    translucent((64, 48), (200, 30, 60)).save(tmp_path / "in.png")
    engine.upscale(tmp_path / "in.png", 4, tmp_path / "out.png")

    out = vips(tmp_path / "out.png")
    visible = out[3] >= 16
    for band, value in enumerate((200, 30, 60)):
        error = (out[band].cast("float") - value).abs()
        assert visible.ifthenelse(error, 0).max() <= 2, f"band {band} shifted"


def test_sixteen_bit_png_stays_sixteen_bit(engine: LocalEngine, tmp_path: Path) -> None:
    source = (vips(ASTRONAUT).crop(200, 100, 40, 30) * 257).cast("ushort")
    source = source.copy(interpretation="rgb16")
    source.pngsave(str(tmp_path / "in.png"))
    engine.upscale(tmp_path / "in.png", 2, tmp_path / "out.png")

    out = vips(tmp_path / "out.png")
    assert (out.width, out.height, out.format, out.interpretation) == (80, 60, "ushort", "rgb16")
    assert out.max() > 255  # the values are 16-bit, not 8-bit ones widened


def test_webp_comes_out_as_webp(engine: LocalEngine, photo: Image.Image, tmp_path: Path) -> None:
    photo.save(tmp_path / "in.webp", quality=90)
    result = engine.upscale(tmp_path / "in.webp", 2, tmp_path / "out.webp")

    assert (result.width, result.height) == (192, 128)
    with Image.open(tmp_path / "out.webp") as out:
        assert (out.format, out.size) == ("WEBP", (192, 128))


def test_lossless_webp_stays_lossless(engine: LocalEngine, tmp_path: Path) -> None:
    translucent((40, 30), (10, 120, 220)).save(tmp_path / "in.webp", lossless=True)
    engine.upscale(tmp_path / "in.webp", 2, tmp_path / "out.webp")

    assert b"VP8L" in (tmp_path / "out.webp").read_bytes()[:64]
    assert vips(tmp_path / "out.webp").bands == 4


def test_exif_orientation_is_applied_and_reset(engine: LocalEngine, tmp_path: Path) -> None:
    # Stored 60x40 with red top left; orientation 6 shows it turned clockwise: red top right.
    stored = Image.new("RGB", (60, 40), (0, 0, 255))
    ImageDraw.Draw(stored).rectangle((0, 0, 29, 19), fill=(255, 0, 0))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored.save(tmp_path / "in.jpg", exif=exif.tobytes(), quality=95)
    assert image_size(tmp_path / "in.jpg") == (40, 60)

    result = engine.upscale(tmp_path / "in.jpg", 2, tmp_path / "out.jpg")

    assert (result.width, result.height) == (80, 120)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (80, 120)
        # libvips always writes the tag, as 1 once the pixels are upright.
        assert out.getexif().get(EXIF_ORIENTATION, 1) == 1
        upright = out.convert("RGB")
        assert near(upright.getpixel((70, 10)), (255, 0, 0))  # red now top right
        assert near(upright.getpixel((10, 10)), (0, 0, 255))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_icc_profile_is_kept(
    engine: LocalEngine, photo: Image.Image, srgb_profile: bytes, tmp_path: Path, suffix: str
) -> None:
    photo.save(tmp_path / f"in{suffix}", icc_profile=srgb_profile)
    engine.upscale(tmp_path / f"in{suffix}", 2, tmp_path / f"out{suffix}")

    with Image.open(tmp_path / f"out{suffix}") as out:
        assert out.info.get("icc_profile") == srgb_profile


def test_missing_source_is_permanent(engine: LocalEngine, tmp_path: Path) -> None:
    with pytest.raises(PermanentUpscaleError, match="missing"):
        engine.upscale(tmp_path / "gone.jpg", 2, tmp_path / "out.jpg")


def test_garbage_is_permanent(engine: LocalEngine, tmp_path: Path) -> None:
    (tmp_path / "in.jpg").write_bytes(os.urandom(4096))
    with pytest.raises(PermanentUpscaleError, match="does not decode"):
        engine.upscale(tmp_path / "in.jpg", 2, tmp_path / "out.jpg")
    assert not (tmp_path / "out.jpg").exists()


def test_truncated_jpeg_is_permanent(
    engine: LocalEngine, photo: Image.Image, tmp_path: Path
) -> None:
    photo.resize((480, 320)).save(tmp_path / "whole.jpg", quality=95)
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "in.jpg").write_bytes(whole[: len(whole) // 2])

    with pytest.raises(PermanentUpscaleError, match="does not decode"):
        engine.upscale(tmp_path / "in.jpg", 2, tmp_path / "out.jpg")
    assert not (tmp_path / "out.jpg").exists()


def test_other_formats_are_permanent(
    engine: LocalEngine, photo: Image.Image, tmp_path: Path
) -> None:
    photo.save(tmp_path / "in.gif")
    with pytest.raises(PermanentUpscaleError, match="JPEG, PNG and WebP"):
        engine.upscale(tmp_path / "in.gif", 2, tmp_path / "out.gif")


@pytest.mark.parametrize("factor", [0, 1, 3, 16])
def test_other_factors_are_permanent(
    engine: LocalEngine, photo: Image.Image, tmp_path: Path, factor: int
) -> None:
    photo.save(tmp_path / "in.jpg")
    with pytest.raises(PermanentUpscaleError, match="factor"):
        engine.upscale(tmp_path / "in.jpg", factor, tmp_path / "out.jpg")


def test_webp_too_large_for_the_format_is_permanent(engine: LocalEngine, tmp_path: Path) -> None:
    pyvips.Image.black(2100, 8, bands=3).webpsave(str(tmp_path / "in.webp"))
    with pytest.raises(PermanentUpscaleError, match="16383"):
        engine.upscale(tmp_path / "in.webp", 8, tmp_path / "out.webp")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_transient(engine: LocalEngine, photo: Image.Image, tmp_path: Path) -> None:
    photo.save(tmp_path / "in.jpg")
    output = tmp_path / "out.jpg"
    output.symlink_to("/dev/full")  # every write fails with ENOSPC

    with pytest.raises(TransientUpscaleError, match="out.jpg"):
        engine.upscale(tmp_path / "in.jpg", 8, output)
    assert not output.is_symlink()


def test_image_size_reads_the_header(tmp_path: Path) -> None:
    Image.new("RGB", (30, 20)).save(tmp_path / "in.png")
    assert image_size(tmp_path / "in.png") == (30, 20)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(PermanentUpscaleError):
        image_size(tmp_path / "junk.png")


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_resampling_is_lanczos3(factor: int) -> None:
    # Large enough to span several of the resampler's tiles; edges differ (libvips repeats
    # edge pixels where Pillow renormalises), so only the interior is compared.
    source = vips(ASTRONAUT).crop(0, 0, 300, 170)
    size = (300 * factor, 170 * factor)
    red, green, blue = (pillow_lanczos3(source[band], size) for band in range(3))
    reference = red.bandjoin([green, blue])

    upscaled = lanczos3_upscale(source.cast("float"), factor)

    error = (upscaled - reference).abs()
    margin = 4 * factor + 1  # odd, so the crop reads regions not aligned to the factor
    interior = error.crop(margin, margin, size[0] - 2 * margin, size[1] - 2 * margin)
    assert interior.max() < 0.01


def test_quality_beats_nearest_neighbour(engine: LocalEngine, tmp_path: Path) -> None:
    with Image.open(ASTRONAUT) as original:
        small = original.convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)
    small.save(tmp_path / "small.png")
    small.resize((512, 512), Image.Resampling.NEAREST).save(tmp_path / "nearest.png")

    engine.upscale(tmp_path / "small.png", 4, tmp_path / "up.png")

    ours = luminance_psnr(tmp_path / "up.png", ASTRONAUT)
    nearest = luminance_psnr(tmp_path / "nearest.png", ASTRONAUT)
    assert ours > MIN_PSNR
    assert ours - nearest > MIN_GAIN_OVER_NEAREST


# Runs in a fresh interpreter and reads its VmHWM, the engine's own peak. Not ru_maxrss: Linux
# carries that across fork and exec, so it reported this test process's peak (520 MiB late in a
# CI run) whenever that was the larger.
PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import json, re, sys, time
    from pathlib import Path
    from worker.engines.local import LocalEngine

    started = time.monotonic()
    result = LocalEngine().upscale(Path(sys.argv[1]), 8, Path(sys.argv[2]))
    status = Path("/proc/self/status").read_text()
    print(json.dumps({
        "width": result.width,
        "height": result.height,
        "seconds": time.monotonic() - started,
        "peak_rss_mib": int(re.search(r"VmHWM:\\s+(\\d+) kB", status)[1]) / 1024,
    }))
    """
)


@pytest.mark.slow
def test_twelve_megapixels_at_8x_stays_under_512_mib(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free < 2 * 2**30:
        pytest.skip("needs 2 GB of free disk for the output")
    # A photo-like 4000x3000 JPEG: a real photo enlarged, with grain.
    photo = vips(ASTRONAUT).resize(4000 / 512, vscale=3000 / 512, kernel="lanczos3")
    grain = pyvips.Image.gaussnoise(4000, 3000, sigma=6)
    (photo + grain).cast("uchar").jpegsave(str(tmp_path / "in.jpg"), Q=90)
    output = tmp_path / "out.jpg"

    run = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(tmp_path / "in.jpg"), str(output)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=300,
        check=True,
    )

    report = json.loads(run.stdout)
    assert (report["width"], report["height"]) == (32000, 24000)
    assert report["peak_rss_mib"] < 512, report
    header = vips(output)  # Pillow refuses to open so many pixels
    assert (header.width, header.height, header.get("vips-loader")) == (32000, 24000, "jpegload")
