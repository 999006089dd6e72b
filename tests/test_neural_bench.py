"""The neural and quality benchmarks on tiny numbers, and the peak memory they report, so that
neither can rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import neural_bench, quality_bench
from storefront.catalog.library import DEMO_DIR

ROOT = Path(__file__).resolve().parents[1]

CHILD_PEAKS = """
import json, resource
from bench.processes import own_peak_rss_mib
print(json.dumps({
    "own": own_peak_rss_mib(),
    "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def test_a_child_reports_its_own_peak_not_its_parents() -> None:
    ballast = bytearray(300 * 2**20)
    ballast[:: 2**12] = b"\x01" * len(range(0, len(ballast), 2**12))  # touch every page

    done = subprocess.run(
        [sys.executable, "-c", CHILD_PEAKS], capture_output=True, text=True, cwd=ROOT, check=True
    )

    peaks = json.loads(done.stdout)
    assert peaks["ru_maxrss"] >= 300  # Linux hands the parent's peak down through fork and exec
    assert peaks["own"] < 100, peaks  # a bare interpreter
    del ballast


def test_the_quality_bench_upscales_the_demo_catalog() -> None:
    photos = quality_bench.photos()

    assert [photo.name for photo in photos] == sorted(
        path.name for path in DEMO_DIR.iterdir() if path.suffix in (".png", ".jpg")
    )
    assert len(photos) == 5


def test_one_lever_runs_the_network_and_reports(tmp_path: Path) -> None:
    output = tmp_path / "out.npy"
    options = json.dumps({"use_winograd63_convolution": False})

    done = subprocess.run(
        [sys.executable, neural_bench.__file__, "--one", options, "16", "2", "2", str(output)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=120,
    )

    result = json.loads(done.stdout)
    assert result["seconds_per_mp"] > 0
    assert 20 < result["peak_mib"] < 1024
    tile = np.load(output)
    assert tile.shape == (3, 32, 32)  # a 16-pixel tile, doubled
    assert np.isfinite(tile).all() and float(tile.std()) > 0.01  # a picture, not zeros
