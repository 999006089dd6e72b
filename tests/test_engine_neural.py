"""The neural engine: waifu2x photo models on ncnn, tiled, with alpha, grey and colour profiles."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import pyvips

from worker.engines import PermanentUpscaleError, get_engine
from worker.engines.neural import (
    DENOISE_MODEL,
    MODEL_DIR,
    MODEL_SHA256,
    NeuralEngine,
    _tiles,
    estimate_seconds,
    neural_model_status,
)

DATA = Path(__file__).parent / "data"


def pixels(image: pyvips.Image) -> np.ndarray:
    """The pixels of `image` as an H x W x bands uint8 array."""
    return np.ndarray(
        buffer=image.write_to_memory(),
        dtype=np.uint8,
        shape=(image.height, image.width, image.bands),
    )


def save(array: np.ndarray, path: Path, interpretation: str = "srgb") -> Path:
    """Write an H x W x bands uint8 array to `path` and return the path."""
    pyvips.Image.new_from_array(array, interpretation=interpretation).write_to_file(str(path))
    return path


def luminance_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of the Rec. 601 luminance of two RGB arrays, in dB."""
    weights = np.array([0.299, 0.587, 0.114])
    diff = a.astype(np.float64) @ weights - b.astype(np.float64) @ weights
    return float(10 * np.log10(255**2 / np.mean(diff**2)))


@pytest.fixture(scope="module")
def engine() -> NeuralEngine:
    """One engine for the module, so the models load once."""
    return NeuralEngine()


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A small natural RGB photo (under 100 pixels a side) as PNG."""
    name = "astronaut.png" if (DATA / "astronaut.png").exists() else "coffee.png"
    image = pyvips.Image.new_from_file(str(DATA / name))
    return save(pixels(image.resize(0.16)[0:3]), tmp_path / "photo.png")


@pytest.mark.parametrize(
    ("size", "factor", "suffix"),
    [((37, 29), 4, ".png"), ((70, 45), 8, ".jpg"), ((70, 45), 4, ".jpg")],
)
def test_output_size_is_exact(
    engine: NeuralEngine, tmp_path: Path, size: tuple[int, int], factor: int, suffix: str
) -> None:
    width, height = size
    rng = np.random.default_rng(1)
    source = save(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), tmp_path / f"s{suffix}")
    output = tmp_path / f"out{suffix}"

    result = engine.upscale(source, factor, output)

    written = pyvips.Image.new_from_file(str(output))
    assert (result.width, result.height) == (width * factor, height * factor)
    assert (written.width, written.height, written.bands) == (width * factor, height * factor, 3)
    assert written.get("vips-loader") == ("pngload" if suffix == ".png" else "jpegload")


def test_tiles_join_without_seams(tmp_path: Path) -> None:
    width, height, tile = 61, 43, 16  # neither side a multiple of the tile size
    y, x = np.mgrid[0:height, 0:width]
    gradient = np.stack([x * 3.5 + 20, y * 4.0 + 10, (x + y) * 2.0 + 5], axis=-1)
    source = save(gradient.astype(np.uint8), tmp_path / "gradient.png")

    NeuralEngine(tile_size=tile).upscale(source, 4, tmp_path / "tiled.png")
    NeuralEngine(tile_size=256).upscale(source, 4, tmp_path / "whole.png")

    tiled = pixels(pyvips.Image.new_from_file(str(tmp_path / "tiled.png"))).astype(int)
    whole = pixels(pyvips.Image.new_from_file(str(tmp_path / "whole.png"))).astype(int)
    for axis, length in ((0, height), (1, width)):
        # Where tiles of the first pass (4x on) and of the second (2x on) meet in the output.
        borders = {4 * start for start, _, _ in _tiles(length, tile)[1:]}
        borders |= {2 * start for start, _, _ in _tiles(2 * length, tile)[1:]}
        steps = np.abs(np.diff(tiled, axis=axis)).max(axis=2).max(axis=1 - axis)
        across = np.zeros(len(steps), dtype=bool)
        across[[border - 1 for border in borders]] = True
        assert across.sum() >= 4
        assert steps[across].max() <= steps[~across].max()
    # Exact-context tiling gives what one run over the whole image gives, up to float rounding.
    assert np.abs(tiled - whole).max() <= 1


def test_png_alpha_is_kept_without_a_dark_fringe(engine: NeuralEngine, tmp_path: Path) -> None:
    y, x = np.mgrid[0:40, 0:48]
    disc = ((x - 24) ** 2 + (y - 20) ** 2 < 15**2) * 255
    # Transparent pixels stored black, as many editors save them.
    colour = np.where(disc[..., None] > 0, np.array([200, 60, 30]), 0)
    source = save(np.dstack([colour, disc]).astype(np.uint8), tmp_path / "disc.png")

    engine.upscale(source, 4, tmp_path / "out.png")

    out = pixels(pyvips.Image.new_from_file(str(tmp_path / "out.png"))).astype(int)
    assert out.shape == (160, 192, 4)
    alpha = out[..., 3]
    assert alpha[80, 96] == 255 and alpha[0, 0] == 0 and alpha[159, 191] == 0
    assert abs(alpha.mean() - disc.mean()) < 3
    visible = alpha > 16
    assert np.abs(out[visible][:, :3] - (200, 60, 30)).max() <= 8


def test_greyscale_stays_grey(engine: NeuralEngine, tmp_path: Path) -> None:
    y, x = np.mgrid[0:30, 0:40]
    grey = (np.sin(x / 4.0) * 60 + y * 3 + 90).astype(np.uint8)[..., None]
    source = save(grey, tmp_path / "grey.png", interpretation="b-w")

    engine.upscale(source, 4, tmp_path / "out.png")

    out = pyvips.Image.new_from_file(str(tmp_path / "out.png"))
    assert (out.width, out.height, out.bands) == (160, 120, 1)
    assert out.interpretation == "b-w"
    assert abs(out.avg() - float(grey.mean())) < 2


def test_jpeg_is_denoised_turned_upright_and_keeps_its_icc_profile(
    engine: NeuralEngine, photo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.engines.neural")
    image = pyvips.Image.new_from_file(str(photo)).icc_transform("srgb", input_profile="srgb")
    profile = bytes(image.get("icc-profile-data"))
    image = image.copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)  # stored rotated 90 degrees
    source = tmp_path / "rotated.jpg"
    image.jpegsave(str(source), Q=95, keep="all")

    result = engine.upscale(source, 4, tmp_path / "out.jpg")

    out = pyvips.Image.new_from_file(str(tmp_path / "out.jpg"))
    assert (result.width, result.height) == (image.height * 4, image.width * 4)
    assert (out.width, out.height) == (image.height * 4, image.width * 4)
    assert bytes(out.get("icc-profile-data")) == profile
    assert out.get_typeof("orientation") == 0 or out.get("orientation") == 1
    assert f"first pass {DENOISE_MODEL}" in caplog.text


def test_model_checksums_are_verified(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODEL_DIR, models)
    assert neural_model_status(models)[0]
    weights = models / "WAIFU2X_PHOTO_UP2X.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    source = save(np.full((8, 8, 3), 128, dtype=np.uint8), tmp_path / "grey.png")

    ok, message = neural_model_status(models)
    with pytest.raises(PermanentUpscaleError, match="WAIFU2X_PHOTO_UP2X.bin.*corrupt"):
        NeuralEngine(model_dir=models).upscale(source, 4, tmp_path / "out.png")
    assert not ok and "WAIFU2X_PHOTO_UP2X.bin" in message
    assert not (tmp_path / "out.png").exists()
    assert set(MODEL_SHA256) == {p.name for p in MODEL_DIR.iterdir() if p.suffix != ".md"}


def test_what_no_retry_mends_is_permanent(engine: NeuralEngine, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")

    with pytest.raises(PermanentUpscaleError, match="does not exist"):
        engine.upscale(tmp_path / "missing.png", 4, tmp_path / "a.png")
    with pytest.raises(PermanentUpscaleError, match="does not decode"):
        engine.upscale(broken, 4, tmp_path / "b.jpg")
    with pytest.raises(PermanentUpscaleError, match="not 3"):
        engine.upscale(broken, 3, tmp_path / "c.jpg")
    source = save(np.zeros((8, 8, 3), dtype=np.uint8), tmp_path / "black.png")
    with pytest.raises(PermanentUpscaleError, match="cannot write .gif"):
        engine.upscale(source, 4, tmp_path / "d.gif")


def test_beats_lanczos_on_a_real_photo(engine: NeuralEngine, tmp_path: Path) -> None:
    name = "astronaut.png" if (DATA / "astronaut.png").exists() else "coffee.png"
    original = pyvips.Image.new_from_file(str(DATA / name))[0:3]
    original = original.crop(0, 0, original.width // 4 * 4, original.height // 4 * 4)
    small = original.resize(0.25, kernel="lanczos3")
    source = save(pixels(small), tmp_path / "small.png")

    engine.upscale(source, 4, tmp_path / "neural.png")

    neural = pixels(pyvips.Image.new_from_file(str(tmp_path / "neural.png")))
    lanczos = pixels(small.resize(4, kernel="lanczos3"))
    reference = pixels(original)
    assert luminance_psnr(neural, reference) > luminance_psnr(lanczos, reference) + 0.5


def test_engine_from_config_and_estimate() -> None:
    engine = get_engine("neural", {"NEURAL_THREADS": "1"})

    assert isinstance(engine, NeuralEngine) and engine.name == "neural"
    assert engine.threads == 1
    assert NeuralEngine.available()
    assert 0 < estimate_seconds(1000, 750, 4) < estimate_seconds(1000, 750, 8)
    assert NeuralEngine.estimate_seconds(2000, 2000, 4) == estimate_seconds(2000, 2000, 4)
