"""Upscaling engines behind one interface, chosen by the `UPSCALER` setting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.engines.base import (
    Engine,
    PermanentUpscaleError,
    TransientUpscaleError,
    UpscaleError,
    UpscaleResult,
)

__all__ = [
    "ENGINE_NAMES",
    "Engine",
    "PermanentUpscaleError",
    "TransientUpscaleError",
    "UpscaleError",
    "UpscaleResult",
    "get_engine",
]

ENGINE_NAMES = ("local", "neural", "upsampler")


def get_engine(name: str, config: Mapping[str, Any] | None = None) -> Engine:
    """Build the engine called `name`, reading what it needs from `config`."""
    config = config or {}
    if name == "local":
        from worker.engines.local import LocalEngine

        return LocalEngine()
    if name == "neural":
        from worker.engines.neural import NeuralEngine

        return NeuralEngine.from_config(config)
    raise ValueError(f"unknown upscaler {name!r}; expected one of {', '.join(ENGINE_NAMES)}")
