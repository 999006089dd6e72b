"""How an image file shows: its EXIF orientation and the size a viewer displays."""

from __future__ import annotations

import pyvips

# EXIF orientations 5 to 8 turn the stored image a quarter turn, so width and height swap.
QUARTER_TURN_ORIENTATIONS = frozenset({5, 6, 7, 8})


def orientation(image: pyvips.Image) -> int:
    """Return the EXIF orientation libvips read for `image`: 1, as stored, when there is none."""
    if image.get_typeof("orientation") == 0:
        return 1
    return int(image.get("orientation"))


def displayed_size(image: pyvips.Image) -> tuple[int, int]:
    """The (width, height) the image shows, after its EXIF orientation."""
    if orientation(image) in QUARTER_TURN_ORIENTATIONS:
        return image.height, image.width
    return image.width, image.height


def fitted_size(width: int, height: int, box: int, box_height: int = 0) -> tuple[int, int]:
    """The size of a (width, height) image shrunk to fit a `box` × `box` square (or `box` ×
    `box_height`), never enlarged: the size of its preview of that edge."""
    scale = min(1.0, box / max(width, 1), (box_height or box) / max(height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))
