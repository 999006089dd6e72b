"""ncnn's own levers for the neural engine, each against ncnn's defaults, alternately.

The network part of a neural upscale is one UpConv7 2x pass after another over tiles, so each lever
is timed on that: a run loads the photo model with the engine's pooled allocators and the lever's
options, runs one tile to warm up, then times `--reps` tiles of random pixels. Every run is a fresh
interpreter; the levers run A B C … A B C … (`--rounds`, 3 unless told) and each row gives the
median seconds per input megapixel of one 2x pass (margins included) with its min–max, the ratio
to the defaults, the run's peak RSS (VmHWM), and how far its output strays from the defaults'
(largest absolute difference on the network's 0–1 scale, over the part of the output all tiles
share; 1/255 is one step of the output).

`--engine` then times the engine itself, 4x of a 1 MP JPEG (two passes, the resample and the
encoding), the figure issue 13's target is in: seconds per input megapixel at 4x.

Run: .venv/bin/python bench/neural_bench.py [--rounds 3] [--reps 3] [--engine]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.processes import own_peak_rss_mib  # noqa: E402

# name → (options set on the network before it loads, tile side, tiles run at once)
LEVERS: dict[str, tuple[dict[str, Any], int, int]] = {
    "ncnn defaults, tile 192 (the engine)": ({}, 192, 1),
    "fp32 storage (no fp16)": (
        {"use_fp16_storage": False, "use_fp16_packed": False, "use_fp16_arithmetic": False},
        192,
        1,
    ),
    "bf16 storage": (
        {
            "use_bf16_storage": True,
            "use_bf16_packed": True,
            "use_fp16_storage": False,
            "use_fp16_packed": False,
            "use_fp16_arithmetic": False,
        },
        192,
        1,
    ),
    "no packed layout": ({"use_packing_layout": False}, 192, 1),
    "no Winograd": ({"use_winograd_convolution": False}, 192, 1),
    "Winograd 4x3, not 6x3": ({"use_winograd63_convolution": False}, 192, 1),
    "no sgemm": ({"use_sgemm_convolution": False}, 192, 1),
    "light mode off": ({"lightmode": False}, 192, 1),
    "OpenMP threads do not spin": ({"openmp_blocktime": 0}, 192, 1),
    "one thread": ({"num_threads": 1}, 192, 1),
    "two tiles at once, one thread each": ({"num_threads": 1}, 192, 2),
    "tile 128": ({}, 128, 1),
    "tile 256": ({}, 256, 1),
    "tile 384": ({}, 384, 1),
}


def time_lever(options: dict[str, Any], tile: int, at_once: int, reps: int, out: Path) -> None:
    """Child process: time `reps` tiles with these options; print JSON, save the first output."""
    import ncnn
    import numpy as np

    from worker.engines import neural

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = os.cpu_count() or 1  # as the engine, unless the lever says
    allocators = (ncnn.PoolAllocator(), ncnn.PoolAllocator())
    net.opt.blob_allocator, net.opt.workspace_allocator = allocators
    for name, value in options.items():
        setattr(net.opt, name, value)
    net.load_param(str(neural.MODEL_DIR / f"{neural.UPSCALE_MODEL}.param"))
    net.load_model(str(neural.MODEL_DIR / f"{neural.UPSCALE_MODEL}.bin"))
    side = tile + 2 * neural.PREPADDING
    # Crops of the same pixels whatever the tile: the outputs agree where their inputs do.
    largest = max(tile for _, tile, _ in LEVERS.values()) + 2 * neural.PREPADDING
    pixels = np.random.default_rng(1).random((reps, 3, largest, largest), np.float32)
    tiles = [np.ascontiguousarray(pixels[index, :, :side, :side]) for index in range(reps)]

    def run(data: Any) -> Any:
        extractor = net.create_extractor()
        extractor.input(neural.INPUT_BLOB, ncnn.Mat(data))
        return np.array(extractor.extract(neural.OUTPUT_BLOB)[1])

    run(tiles[0])
    started = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        outputs = list(pool.map(run, tiles))
    seconds = time.perf_counter() - started
    np.save(out, outputs[0])
    megapixels = reps * tile * tile / 1e6
    print(json.dumps({"seconds_per_mp": seconds / megapixels, "peak_mib": own_peak_rss_mib()}))


def compare_levers(rounds: int, reps: int) -> None:
    """Run every lever `rounds` times, alternately, and print the table."""
    seconds: dict[str, list[float]] = {name: [] for name in LEVERS}
    peaks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="smi-neural-") as name:
        folder = Path(name)
        for _ in range(rounds):
            for index, (lever, (options, tile, at_once)) in enumerate(LEVERS.items()):
                command = [sys.executable, __file__, "--one", json.dumps(options), str(tile)]
                command += [str(at_once), str(reps), str(folder / f"{index}.npy")]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                result = json.loads(done.stdout)
                seconds[lever].append(result["seconds_per_mp"])
                peaks[lever] = max(peaks.get(lever, 0.0), result["peak_mib"])
        print_levers(seconds, peaks, folder)


def print_levers(seconds: dict[str, list[float]], peaks: dict[str, float], folder: Path) -> None:
    """The table: median s/MP (min–max), ratio to the defaults, peak RSS, largest difference."""
    import numpy as np

    reference = np.load(folder / "0.npy")
    baseline = statistics.median(seconds[next(iter(LEVERS))])
    print(f"{'lever':<40}{'s/MP of a 2x pass (min–max)':>30}{'ratio':>7}{'MiB':>6}  largest diff")
    for index, lever in enumerate(LEVERS):
        output = np.load(folder / f"{index}.npy")
        side = min(reference.shape[1], output.shape[1])
        diff = float(np.abs(output[:, :side, :side] - reference[:, :side, :side]).max())
        median = statistics.median(seconds[lever])
        spread = f"{median:.2f} ({min(seconds[lever]):.2f}–{max(seconds[lever]):.2f})"
        print(f"{lever:<40}{spread:>30}{median / baseline:>7.2f}{peaks[lever]:>6.0f}  {diff:.5f}")


def time_engine(rounds: int) -> None:
    """The engine's 4x of a 1 MP photo JPEG, `rounds` times, each in a fresh interpreter."""
    import pyvips

    with tempfile.TemporaryDirectory(prefix="smi-neural-") as name:
        folder = Path(name)
        photo = pyvips.Image.new_from_file(str(ROOT / "tests" / "data" / "astronaut.png"))[0:3]
        scale = (1e6 / (photo.width * photo.height)) ** 0.5
        source = folder / "one-megapixel.jpg"
        photo.resize(scale, kernel="lanczos3").jpegsave(str(source), Q=90)
        megapixels = pyvips.Image.new_from_file(str(source)).width ** 2 / 1e6
        runs = []
        for _ in range(rounds):
            command = [sys.executable, str(ROOT / "bench" / "quality_bench.py"), "--one"]
            command += ["neural", "4", str(source), str(folder / "out.jpg")]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        per_mp = [run["seconds"] / megapixels for run in runs]
        print(
            f"\nthe engine, 4x of a {megapixels:.2f} MP JPEG: {statistics.median(per_mp):.1f} s per"
            f" input MP ({min(per_mp):.1f}–{max(per_mp):.1f}),"
            f" peak {max(run['peak_mib'] for run in runs):.0f} MiB"
        )


def main() -> None:
    """Parse arguments; compare the levers, or with --one time a single lever."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="tiles timed per run")
    parser.add_argument("--engine", action="store_true", help="also time the engine at 4x")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        options, tile, at_once, reps, out = args.one
        time_lever(json.loads(options), int(tile), int(at_once), int(reps), Path(out))
        return
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    compare_levers(args.rounds, args.reps)
    if args.engine:
        time_engine(args.rounds)
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
