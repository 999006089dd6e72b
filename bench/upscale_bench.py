"""The local engine against a bare libvips resize-and-encode, alternately, on photo-like JPEGs.

For each input size and factor the engine (A) and its floor (B) run A B A B … (5 pairs unless
told otherwise), each in a fresh interpreter so that its peak RSS is its own. The floor is the
bare libvips call at the engine's output settings: `resize(factor, kernel="lanczos3")` on a
sequential read, saved with the engine's own `jpegsave` options (Q 95, no chroma subsampling,
optimised Huffman tables up to the engine's limit, metadata kept, not interlaced). libvips
enlarges with its bicubic interpolator whatever kernel `resize` is given; the engine's true
Lanczos3 (seven taps a phase) and its sharpening are what the ratio prices. Each row gives the
median engine/floor ratio of wall time with its min–max over the pairs, the same for CPU time
(user + system, less sensitive to other work on the machine), and each side's peak RSS.

Run: .venv/bin/python bench/upscale_bench.py [--quick] [--pairs 5] [--megapixels 1,4,12]
         [--factors 4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyvips

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "tests" / "data" / "astronaut.png"
# Megapixels → a 4:3 size of about that many pixels.
SIZES = {1: (1155, 866), 4: (2309, 1732), 12: (4000, 3000)}
FACTORS = (4, 8)

# Each run is a fresh interpreter, and VmHWM is that run's peak alone; imports are not timed.
CHILD = """
import json, resource, sys, time
from pathlib import Path
import pyvips
from bench.processes import own_peak_rss_mib
from worker.engines.local import LocalEngine, jpeg_options

mode, source, factor, output = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
if mode == "engine":
    LocalEngine().upscale(Path(source), factor, Path(output))
else:
    image = pyvips.Image.new_from_file(source, access="sequential")
    resized = image.resize(factor, kernel="lanczos3")
    resized.jpegsave(output, **jpeg_options(resized))
seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "seconds": seconds,
    "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
    "peak_rss_mib": own_peak_rss_mib(),
}))
"""


def make_photo(size: tuple[int, int], path: Path) -> None:
    """Write a photo-like JPEG of `size`: a real photo enlarged to it, with film grain."""
    width, height = size
    photo = pyvips.Image.new_from_file(str(PHOTO))
    photo = photo.resize(width / photo.width, vscale=height / photo.height, kernel="lanczos3")
    grain = pyvips.Image.gaussnoise(width, height, sigma=6)
    (photo + grain).cast("uchar").jpegsave(str(path), Q=90)


def measure(mode: str, source: Path, factor: int, output: Path) -> dict[str, float]:
    """Run one upscale in a fresh interpreter; return its seconds and peak RSS, then delete it."""
    try:
        run = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(source), str(factor), str(output)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
    finally:
        output.unlink(missing_ok=True)
    report: dict[str, float] = json.loads(run.stdout)
    return report


def spread(values: list[float]) -> str:
    """`median (min–max)` of `values`."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def numbers(text: str) -> list[int]:
    """A comma-separated list of whole numbers."""
    return [int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    """Print one row per input size and factor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 1 and 4 MP inputs")
    parser.add_argument("--pairs", type=int, default=5, help="engine/floor pairs per case")
    parser.add_argument("--megapixels", type=numbers, default=None, help="of 1,4,12")
    parser.add_argument("--factors", type=numbers, default=list(FACTORS), help="of 4,8")
    args = parser.parse_args(argv)
    megapixels = args.megapixels or ([1, 4] if args.quick else [1, 4, 12])

    print(f"load average before: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    header = (
        "input MP",
        "factor",
        "output MP",
        "engine s",
        "floor s",
        "ratio (min–max)",
        "CPU ratio (min–max)",
        "engine MiB",
        "floor MiB",
    )
    widths = (8, 6, 9, 8, 7, 18, 19, 10, 9)
    print("  ".join(f"{title:>{width}}" for title, width in zip(header, widths, strict=True)))
    with tempfile.TemporaryDirectory(prefix="upscale-bench-") as scratch:
        for mp in megapixels:
            source = Path(scratch) / f"photo-{mp}mp.jpg"
            make_photo(SIZES[mp], source)
            width, height = SIZES[mp]
            for factor in args.factors:
                output = Path(scratch) / f"out-{mp}mp-{factor}x.jpg"
                engine, floor = [], []
                for _ in range(args.pairs):
                    engine.append(measure("engine", source, factor, output))
                    floor.append(measure("floor", source, factor, output))
                pairs = list(zip(engine, floor, strict=True))
                row = (
                    f"{width * height / 1e6:.1f}",
                    f"{factor}x",
                    f"{width * height * factor**2 / 1e6:.0f}",
                    f"{statistics.median(run['seconds'] for run in engine):.2f}",
                    f"{statistics.median(run['seconds'] for run in floor):.2f}",
                    spread([a["seconds"] / b["seconds"] for a, b in pairs]),
                    spread([a["cpu_seconds"] / b["cpu_seconds"] for a, b in pairs]),
                    f"{max(run['peak_rss_mib'] for run in engine):.0f}",
                    f"{max(run['peak_rss_mib'] for run in floor):.0f}",
                )
                print(
                    "  ".join(f"{cell:>{width}}" for cell, width in zip(row, widths, strict=True)),
                    flush=True,
                )
    print(f"load average after: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
