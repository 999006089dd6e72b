"""Time and peak memory of the local engine against a bare libvips resize, on photo-like JPEGs.

Run: .venv/bin/python bench/upscale_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import json
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

# Each case runs in a fresh interpreter, so ru_maxrss is that case's peak alone.
CHILD = """
import json, resource, sys, time
from pathlib import Path
import pyvips
from worker.engines.local import LocalEngine

mode, source, factor, output = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
started = time.perf_counter()
if mode == "engine":
    LocalEngine().upscale(Path(source), factor, Path(output))
else:
    image = pyvips.Image.new_from_file(source, access="sequential")
    image.resize(factor, kernel="lanczos3").jpegsave(output)
print(json.dumps({
    "seconds": time.perf_counter() - started,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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


def main(argv: list[str] | None = None) -> None:
    """Print one row per input size and factor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 1 and 4 MP inputs")
    args = parser.parse_args(argv)
    megapixels = [1, 4] if args.quick else [1, 4, 12]

    header = ("input MP", "factor", "output MP", "engine s", "peak RSS MiB", "bare s", "ratio")
    print("  ".join(f"{title:>12}" for title in header))
    with tempfile.TemporaryDirectory(prefix="upscale-bench-") as scratch:
        for mp in megapixels:
            source = Path(scratch) / f"photo-{mp}mp.jpg"
            make_photo(SIZES[mp], source)
            width, height = SIZES[mp]
            for factor in FACTORS:
                output = Path(scratch) / f"out-{mp}mp-{factor}x.jpg"
                engine = measure("engine", source, factor, output)
                bare = measure("bare", source, factor, output)
                row = (
                    f"{width * height / 1e6:.1f}",
                    f"{factor}x",
                    f"{width * height * factor**2 / 1e6:.0f}",
                    f"{engine['seconds']:.1f}",
                    f"{engine['peak_rss_mib']:.0f}",
                    f"{bare['seconds']:.1f}",
                    f"{engine['seconds'] / bare['seconds']:.2f}",
                )
                print("  ".join(f"{cell:>12}" for cell in row), flush=True)


if __name__ == "__main__":
    main()
