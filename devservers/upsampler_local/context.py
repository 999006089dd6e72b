"""What request handlers share: the state and the job runner of the running server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from flask import current_app

from .processing import JobRunner
from .store import UpsamplerState

EXTENSION = "upsampler_local"


@dataclass
class Runtime:
    """The state and job runner one app instance serves."""

    state: UpsamplerState
    runner: JobRunner


def runtime() -> Runtime:
    """Return the runtime of the app handling the current request."""
    return cast(Runtime, current_app.extensions[EXTENSION])
