"""Which engine upscales a tier, and how long the neural engine is expected to take.

Plain arithmetic: the web side prices and offers tiers with it without importing numpy, pyvips or
ncnn; the neural engine (worker.engines.neural) reads its pass plan from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Seconds per megapixel fed to one 2x pass, tiles, margins and file I/O included: a pass took
# 2.6-3.5 s per megapixel (bench/neural_bench.py) and 4x of a 1 MP JPEG, one pass and the rest,
# 3.8-4.0 s, with 2 ncnn threads on the otherwise idle 2-core development machine (AVX-512); when
# other work shares the cores, ncnn's threads wait for each other: 2-4x slower. One thread is
# 1.3-1.8 times slower.
NET_SECONDS_PER_MEGAPIXEL = 4.0
# Seconds per output megapixel for the final resample and encoding (PNG, the slower format).
SAVE_SECONDS_PER_MEGAPIXEL = 0.06
# Network 2x passes per factor; a Lanczos3 enlargement does the rest (the engine says why).
NEURAL_PASSES: dict[int, int] = {2: 1, 4: 1, 8: 2}


def neural_seconds(width: int, height: int, factor: int) -> float:
    """Seconds the neural engine is expected to take for a `width` x `height` input at `factor`."""
    passes = NEURAL_PASSES[factor]
    megapixels = width * height / 1_000_000
    pass_megapixels = megapixels * sum(4**i for i in range(passes))
    output_megapixels = megapixels * factor * factor
    return (
        1.0
        + NET_SECONDS_PER_MEGAPIXEL * pass_megapixels
        + SAVE_SECONDS_PER_MEGAPIXEL * output_megapixels
    )


def engine_for(width: int, height: int, factor: int, config: Mapping[str, Any]) -> str | None:
    """The engine that upscales this tier, or None when it is not offered on this engine.

    With the neural engine, a tier whose estimated run time is over NEURAL_MAX_MINUTES goes to
    the local engine, or is not offered, as NEURAL_OVER_LIMIT says.
    """
    configured = str(config["UPSCALER"])
    if configured != "neural":
        return configured
    if neural_seconds(width, height, factor) <= int(config["NEURAL_MAX_MINUTES"]) * 60:
        return "neural"
    return "local" if config["NEURAL_OVER_LIMIT"] == "local" else None
