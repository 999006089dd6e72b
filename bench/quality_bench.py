"""Quality benchmark: downscale the demo photos, upscale them back with each engine, and compare.

Each photo is cropped to a multiple of 8, downscaled by 4 (and by 8 for the 8x table) with libvips'
lanczos3 `resize`, saved in the photo's own format (JPEG at quality 90, so JPEG photos exercise the
neural engine's denoising first pass), and upscaled back. Scores are on Rec. 601 luminance: PSNR,
and SSIM with the 11x11 Gaussian window (sigma 1.5) of Wang et al. 2004, computed over the valid
region (no padding). Every upscale runs in its own Python process so its wall time and peak RSS
(VmHWM) belong to that upscale alone; model loading counts, interpreter start-up does not.
The machine has 2 cores shared with other work, so times are noisy: run twice before trusting one.

    .venv/bin/python bench/quality_bench.py [--out /tmp/smi-quality.png] [--tiers]

`--tiers` also times large tiers on the neural engine (4x of 16 MP and of 4 MP, 8x of 1.5 MP).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.processes import own_peak_rss_mib  # noqa: E402

PHOTO_DIRS = (ROOT / "storefront" / "catalog" / "demo" / "images", ROOT / "tests" / "data")
CROP = 128  # side of the crop each photo contributes to the side-by-side picture, in output pixels


@dataclass
class Run:
    """One upscale: its scores against the original, wall time and peak memory."""

    psnr: float
    ssim: float
    seconds: float
    peak_mib: float


def photos() -> list[Path]:
    """The demo photos: the repo's demo catalog if present, else the test images."""
    for directory in PHOTO_DIRS:
        found = sorted(p for p in directory.glob("*") if p.suffix.lower() in (".png", ".jpg"))
        if found:
            return found
    raise SystemExit(f"no photos in {' or '.join(map(str, PHOTO_DIRS))}")


def pixels(image: pyvips.Image) -> np.ndarray:
    """The pixels of an 8-bit image as an H x W x bands array."""
    return np.ndarray(
        buffer=image.write_to_memory(),
        dtype=np.uint8,
        shape=(image.height, image.width, image.bands),
    )


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luminance of an RGB array, as float64."""
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two luminance arrays, in dB."""
    return float(10 * np.log10(255**2 / np.mean((a - b) ** 2)))


def _gaussian_filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D array with a 1-D kernel."""
    view = np.lib.stride_tricks.sliding_window_view
    rows = view(x, len(kernel), axis=0) @ kernel
    return view(rows, len(kernel), axis=1) @ kernel


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two luminance arrays, Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03."""
    kernel = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    kernel /= kernel.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _gaussian_filter(a, kernel), _gaussian_filter(b, kernel)
    var_a = _gaussian_filter(a * a, kernel) - mu_a**2
    var_b = _gaussian_filter(b * b, kernel) - mu_b**2
    cov = _gaussian_filter(a * b, kernel) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(index.mean())


def upscale_in_child(
    engine: str, factor: int, source: Path, output: Path, plan: str = ""
) -> tuple[float, float]:
    """Run one upscale in a fresh process; return its seconds and peak RSS in MiB."""
    command = [sys.executable, __file__, "--one", engine, str(factor), str(source), str(output)]
    if plan:
        command += ["--plan", plan]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{engine} {factor}x of {source.name} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), float(result["peak_mib"])


def run_one(engine: str, factor: int, source: Path, output: Path, plan: str) -> None:
    """Child process: upscale once and print seconds and peak memory as JSON."""
    started = time.perf_counter()
    if engine == "lanczos3":
        image = pyvips.Image.new_from_file(str(source)).resize(factor, kernel="lanczos3")
        if output.suffix == ".jpg":
            image.jpegsave(str(output), Q=93, subsample_mode="off")
        else:
            image.pngsave(str(output))
    else:
        from worker.engines import get_engine

        if plan:
            from worker.engines import neural

            passes, resample = (int(n) for n in plan.split(","))
            neural.PLANS[factor] = neural._Plan(passes, resample)
        get_engine(engine, {}).upscale(source, factor, output)
    seconds = time.perf_counter() - started
    peak = own_peak_rss_mib()
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def local_engine_name() -> str:
    """'local' when the local engine exists, else plain libvips lanczos3 stands in for it."""
    try:
        import worker.engines.local  # noqa: F401
    except ImportError:
        return "lanczos3"
    return "local"


def measure(
    engine: str, factor: int, small: Path, original: np.ndarray, tmp: Path, plan: str = ""
) -> tuple[Run, np.ndarray]:
    """Upscale `small` with `engine` and score it against `original`."""
    output = tmp / f"{small.stem}-{engine}-{factor}x{plan.replace(',', '')}{small.suffix}"
    seconds, peak = upscale_in_child(engine, factor, small, output, plan)
    result = pixels(pyvips.Image.new_from_file(str(output))[0:3])
    a, b = luminance(original), luminance(result)
    return Run(psnr(a, b), ssim(a, b), seconds, peak), result


def degrade(photo: Path, factor: int, tmp: Path) -> tuple[Path, np.ndarray]:
    """Save `photo` downscaled by `factor` in its own format; return it and the cropped original."""
    image = pyvips.Image.new_from_file(str(photo))[0:3]
    image = image.crop(0, 0, image.width // 8 * 8, image.height // 8 * 8)
    small = image.resize(1 / factor, kernel="lanczos3")
    path = tmp / f"{photo.stem}-small{factor}{photo.suffix.lower()}"
    if photo.suffix.lower() == ".jpg":
        small.jpegsave(str(path), Q=90)
    else:
        small.pngsave(str(path))
    return path, pixels(image)


def centred_reference(small: Path, original: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of a centre-aligned libvips enlargement of `small`, computed in-process."""
    from worker.engines.neural import centred_upscale

    image = centred_upscale(pyvips.Image.new_from_file(str(small)), 4)
    a, b = luminance(original), luminance(pixels(image))
    return psnr(a, b), ssim(a, b)


def crop_strip(images: list[np.ndarray]) -> np.ndarray:
    """The same CROP x CROP region of each image, from the busiest part, side by side."""
    grey = luminance(images[0])
    height, width = grey.shape
    best, best_at = -1.0, (0, 0)
    for y in range(0, height - CROP + 1, CROP // 2):
        for x in range(0, width - CROP + 1, CROP // 2):
            detail = float(np.abs(np.diff(grey[y : y + CROP, x : x + CROP], axis=1)).mean())
            if detail > best:
                best, best_at = detail, (y, x)
    y, x = best_at
    gap = np.full((CROP, 4, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for image in images:
        parts += [image[y : y + CROP, x : x + CROP, :3], gap]
    return np.concatenate(parts[:-1], axis=1)


def table(title: str, names: list[str], rows: dict[str, dict[str, Run]]) -> None:
    """Print one engine-per-column table with an average row."""
    print(f"\n{title}")
    header = f"{'photo':<30}" + "".join(f"{n + ' PSNR/SSIM':>22}{'s':>7}{'MiB':>6}" for n in names)
    print(header)
    for photo, runs in rows.items():
        line = f"{photo:<30}"
        for name in names:
            run = runs[name]
            line += f"{run.psnr:>13.2f} /{run.ssim:>6.4f}{run.seconds:>7.1f}{run.peak_mib:>6.0f}"
        print(line)
    line = f"{'average':<30}"
    for name in names:
        column = [r[name] for r in rows.values()]
        line += (
            f"{np.mean([r.psnr for r in column]):>13.2f} /{np.mean([r.ssim for r in column]):>6.4f}"
            f"{np.mean([r.seconds for r in column]):>7.1f}{max(r.peak_mib for r in column):>6.0f}"
        )
    print(line)


def quality(out: Path) -> None:
    """The 4x and 8x tables and the side-by-side crops."""
    local = local_engine_name()
    strips: list[np.ndarray] = []
    rows4: dict[str, dict[str, Run]] = {}
    rows8: dict[str, dict[str, Run]] = {}
    centred_scores: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="smi-bench-") as name:
        tmp = Path(name)
        for photo in photos():
            small, original = degrade(photo, 4, tmp)
            label = f"{photo.name} {original.shape[1]}x{original.shape[0]}"
            local_run, local_image = measure(local, 4, small, original, tmp)
            neural_run, neural_image = measure("neural", 4, small, original, tmp)
            rows4[label] = {local: local_run, "neural": neural_run}
            centred_scores.append(centred_reference(small, original))
            strips.append(crop_strip([original, local_image, neural_image]))

            small8, original = degrade(photo, 8, tmp)
            rows8[label] = {
                local: measure(local, 8, small8, original, tmp)[0],
                "neural a": measure("neural", 8, small8, original, tmp, "3,1")[0],
                "neural b": measure("neural", 8, small8, original, tmp, "2,2")[0],
            }
            print(f"done {photo.name}", file=sys.stderr)
    table("4x (original | downscaled 4x | upscaled back)", [local, "neural"], rows4)
    print(
        "reference: libvips lanczos3 resize shifted onto the centre grid (neural.centred_upscale):"
        f" {np.mean([p for p, _ in centred_scores]):.2f} /"
        f" {np.mean([s for _, s in centred_scores]):.4f} average"
    )
    table(
        "8x: a = three 2x network passes, b = two passes + Lanczos3 2x (the engine)",
        [local, "neural a", "neural b"],
        rows8,
    )
    base = np.mean([r[local].psnr for r in rows8.values()])
    for variant in ("neural a", "neural b"):
        gain = np.mean([r[variant].psnr for r in rows8.values()]) - base
        seconds = np.mean([r[variant].seconds for r in rows8.values()])
        print(
            f"{variant}: +{gain:.2f} dB over {local} in {seconds:.1f} s = {gain / seconds:.3f} dB/s"
        )

    width = max(s.shape[1] for s in strips)
    padded = [
        np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips
    ]
    picture = np.concatenate(padded, axis=0)
    pyvips.Image.new_from_array(picture, interpretation="srgb").resize(2, kernel="nearest").pngsave(
        str(out)
    )
    print(f"\nside-by-side crops (original | {local} | neural, 2x nearest): {out}")


def tiers() -> None:
    """Time and peak memory of large neural tiers: 4x of 16 MP and of 4 MP (PNG), 8x of 1.5 MP."""
    photo = max(photos(), key=lambda p: pyvips.Image.new_from_file(str(p)).width)
    base = pyvips.Image.new_from_file(str(photo))[0:3]
    print(f"\nlargest tiers on the neural engine (input enlarged from {photo.name}):")
    with tempfile.TemporaryDirectory(prefix="smi-tiers-") as name:
        tmp = Path(name)
        for megapixels, factor, suffix in ((16.0, 4, ".jpg"), (4.0, 4, ".png"), (1.5, 8, ".jpg")):
            scale = (megapixels * 1e6 / (base.width * base.height)) ** 0.5
            source = tmp / f"tier{factor}{suffix}"
            big = base.resize(scale, kernel="lanczos3")
            if suffix == ".jpg":
                big.jpegsave(str(source), Q=90)
            else:
                big.pngsave(str(source))
            from worker.engines.neural import estimate_seconds

            estimate = estimate_seconds(big.width, big.height, factor)
            output = tmp / f"out{suffix}"
            seconds, peak = upscale_in_child("neural", factor, source, output)
            print(
                f"  {factor}x {big.width}x{big.height} {suffix[1:]:>4}: {seconds:6.1f} s"
                f" (estimate {estimate:5.1f} s), peak {peak:4.0f} MiB,"
                f" output {output.stat().st_size / 2**20:.0f} MiB"
            )
            output.unlink()


def main() -> None:
    """Parse arguments and run the benchmark or, with --one, a single child upscale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/smi-quality.png"))
    parser.add_argument("--tiers", action="store_true", help="also time the largest tiers")
    parser.add_argument("--only-tiers", action="store_true", help="time the largest tiers only")
    parser.add_argument("--one", nargs=4, metavar=("ENGINE", "FACTOR", "SOURCE", "OUTPUT"))
    parser.add_argument("--plan", default="", help="with --one: neural passes,resample")
    args = parser.parse_args()
    if args.one:
        engine, factor, source, output = args.one
        run_one(engine, int(factor), Path(source), Path(output), args.plan)
        return
    if not args.only_tiers:
        quality(args.out)
    if args.tiers or args.only_tiers:
        tiers()


if __name__ == "__main__":
    main()
