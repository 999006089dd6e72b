"""What every upscaling engine shares: its interface, its result, and its two kinds of failure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class UpscaleError(Exception):
    """An engine could not produce the output."""


class TransientUpscaleError(UpscaleError):
    """A failure that a later attempt may mend (a timeout, a storage or network hiccup)."""


class PermanentUpscaleError(UpscaleError):
    """A failure no retry can mend (the original is missing or does not decode, a wrong size)."""


@dataclass(frozen=True)
class UpscaleResult:
    """What an engine made: the output's pixel size."""

    width: int
    height: int


class Engine(Protocol):
    """Writes `output`, an upscaled copy of `source` by `factor`, in the source's format."""

    name: str

    def upscale(self, source: Path, factor: int, output: Path) -> UpscaleResult: ...
