"""Cheap facts about image files, read from their headers without decoding the pixels."""

from __future__ import annotations

from pathlib import Path

import pyvips

from worker.engines import PermanentUpscaleError

# EXIF orientations 5 to 8 turn the stored image a quarter turn, so width and height swap.
_QUARTER_TURN_ORIENTATIONS = frozenset({5, 6, 7, 8})


def image_size(path: Path) -> tuple[int, int]:
    """Return the (width, height) the image at `path` shows, after its EXIF orientation."""
    if not path.is_file():
        raise PermanentUpscaleError(f"no image at {path}")
    try:
        # Reads the header only. Revalidate: a retried job may have rewritten the same path.
        image = pyvips.Image.new_from_file(str(path), revalidate=True)
    except pyvips.Error as exc:
        raise PermanentUpscaleError(f"{path.name} is not an image: {vips_message(exc)}") from exc
    if orientation(image) in _QUARTER_TURN_ORIENTATIONS:
        return image.height, image.width
    return image.width, image.height


def orientation(image: pyvips.Image) -> int:
    """Return the EXIF orientation libvips read for `image`: 1, as stored, when there is none."""
    if image.get_typeof("orientation") == 0:
        return 1
    return int(image.get("orientation"))


def vips_message(exc: pyvips.Error) -> str:
    """Return libvips' reason for `exc` on one line, without pyvips' 'unable to call' preamble."""
    detail = " ".join(line.strip() for line in (exc.detail or "").splitlines() if line.strip())
    return detail or exc.message
