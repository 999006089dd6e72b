"""Which engine upscales a tier, and how long the neural engine is expected to take.

Plain arithmetic: the web side prices and offers tiers with it without importing numpy, pyvips or
ncnn; the neural engine (worker.engines.neural) reads its pass plan from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Seconds per megapixel fed to one 2x pass, tiles, margins and file I/O included: 4x of a 1000x750
# JPEG (3.75 MP of pass input) took 15.0-15.8 s and 4x of 2142x1868 took 80-83 s, with 2 ncnn
# threads on the otherwise idle 2-core development Xeon (AVX-512). One thread is about 1.7 times
# slower. When other work shares the cores, ncnn's threads wait for each other: 2-4x slower.
NET_SECONDS_PER_MEGAPIXEL = 4.0
# Seconds per output megapixel for the final resample and encoding (PNG, the slower format).
SAVE_SECONDS_PER_MEGAPIXEL = 0.06
# Network 2x passes per factor; what is left of the factor is a plain resample (see the engine).
NEURAL_PASSES: dict[int, int] = {2: 1, 4: 2, 8: 2}


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
