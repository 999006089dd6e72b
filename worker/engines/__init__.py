"""Upscaling engines behind one interface, chosen by the `UPSCALER` setting."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol


class UpscaleError(Exception):
    """An engine could not produce the output."""


class TransientUpscaleError(UpscaleError):
    """A failure that a later attempt may mend (a timeout, a storage or network hiccup)."""


class PermanentUpscaleError(UpscaleError):
    """A failure no retry can mend (the original is missing or does not decode, a wrong size)."""


@dataclass(frozen=True)
class UpscaleResult:
    """What an engine made: the output's pixel size and, when the engine knows it, its cost."""

    width: int
    height: int
    credits_used: int | None = None
    cost: Decimal | None = None


class Engine(Protocol):
    """Writes `output`, an upscaled copy of `source` by `factor`, in the source's format."""

    name: str

    def upscale(self, source: Path, factor: int, output: Path) -> UpscaleResult: ...


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
