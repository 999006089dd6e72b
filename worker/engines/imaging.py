"""Cheap facts about image files, read from their headers without decoding the pixels."""

from __future__ import annotations

from pathlib import Path

import pyvips

from storefront.images import displayed_size, orientation
from worker.engines.base import PermanentUpscaleError

__all__ = ["image_size", "orientation", "vips_message"]


def image_size(path: Path) -> tuple[int, int]:
    """Return the (width, height) the image at `path` shows, after its EXIF orientation."""
    if not path.is_file():
        raise PermanentUpscaleError(f"no image at {path}")
    try:
        # Reads the header only. Revalidate: a retried job may have rewritten the same path.
        image = pyvips.Image.new_from_file(str(path), revalidate=True)
    except pyvips.Error as exc:
        raise PermanentUpscaleError(f"{path.name} is not an image: {vips_message(exc)}") from exc
    return displayed_size(image)


def vips_message(exc: pyvips.Error) -> str:
    """Return libvips' reason for `exc` on one line, without pyvips' 'unable to call' preamble."""
    detail = " ".join(line.strip() for line in (exc.detail or "").splitlines() if line.strip())
    return detail or exc.message
