"""Cheap facts about image files, read from their headers without decoding the pixels.

Only JPEG, PNG and WebP are read: a file's first bytes say which it is, and only that format's
own libvips loader opens it. `restrict_loaders()` blocks every other libvips loader for the
whole process (the worker calls it once), so no SVG, TIFF, HEIF, GIF, vips, CSV or matrix
parser ever sees a file the worker handles.
"""

from __future__ import annotations

from pathlib import Path

import pyvips

from storefront.images import displayed_size, orientation
from worker.engines.base import PermanentUpscaleError

__all__ = [
    "UnsupportedImage",
    "image_size",
    "orientation",
    "restrict_loaders",
    "sniff_format",
    "vips_message",
]

# The formats the worker reads and delivers, and the one libvips loader (by file) for each.
LOADERS = {"jpeg": "jpegload", "png": "pngload", "webp": "webpload"}
# libvips' loader classes the worker keeps: its formats, and raw (neural's own pass files;
# libvips never picks it by sniffing a file).
KEPT_LOADER_CLASSES = (
    "VipsForeignLoadJpeg",
    "VipsForeignLoadPng",
    "VipsForeignLoadWebp",
    "VipsForeignLoadRaw",
)
# Names for what a refused file looks like, by its first bytes (for the error message only).
_OTHER_SIGNATURES = (
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"II+\x00", "a TIFF image"),
    (b"MM\x00+", "a TIFF image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x08\xf2\xa6\xb6", "a libvips image"),
    (b"\xb6\xa6\xf2\x08", "a libvips image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"\xff\x0a", "a JPEG XL image"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
)
_SNIFF_BYTES = 64


class UnsupportedImage(PermanentUpscaleError):
    """A file that is not a JPEG, PNG or WebP image; `found` says what it looks like."""

    def __init__(self, message: str, found: str) -> None:
        super().__init__(message)
        self.found = found


def sniff_format(head: bytes) -> str | None:
    """The format ("jpeg", "png" or "webp") the first bytes of a file announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def describe(head: bytes) -> str:
    """What a file that is not JPEG, PNG or WebP looks like, from its first bytes."""
    for signature, name in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp":
        heif = head[8:12] in (b"heic", b"heix", b"mif1", b"avif")
        return "a HEIF/AVIF image" if heif else "an ISO media file"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")) or b"<svg" in text:
        return "an SVG image"
    if text.startswith((b"<!doctype", b"<html", b"<")):
        return "not an image (HTML or XML)"
    return "not an image"


def open_image(path: Path) -> pyvips.Image:
    """Open `path` (header only) with the loader of the format its first bytes announce.

    Raises `UnsupportedImage` for anything but JPEG, PNG and WebP, whatever its name says, and
    `PermanentUpscaleError` for a file of those formats that libvips cannot read.
    """
    if not path.is_file():
        raise PermanentUpscaleError(f"no image at {path}")
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    found = sniff_format(head)
    if found is None:
        what = describe(head)
        raise UnsupportedImage(
            f"{path.name} is {what}; only JPEG, PNG or WebP images are accepted", what
        )
    loader = LOADERS[found]
    try:
        # Reads the header only. Revalidate: a retried job may have rewritten the same path.
        image = getattr(pyvips.Image, loader)(str(path), revalidate=True)
    except pyvips.Error as exc:
        raise PermanentUpscaleError(f"{path.name} is not an image: {vips_message(exc)}") from exc
    if image.get("vips-loader") != loader:  # never: the call names the loader
        raise UnsupportedImage(f"{path.name} was not read as {found}", "not an image")
    return image


def image_size(path: Path) -> tuple[int, int]:
    """Return the (width, height) the JPEG, PNG or WebP image at `path` shows, after its EXIF
    orientation; `UnsupportedImage` for any other kind of file."""
    return displayed_size(open_image(path))


def restrict_loaders() -> None:
    """Block, for this whole process, libvips' untrusted loaders and every loader the worker
    does not need (SVG, TIFF, HEIF, GIF, vips, CSV, matrix …); JPEG, PNG, WebP and raw stay."""
    pyvips.block_untrusted_set(True)
    pyvips.operation_block_set("VipsForeignLoad", True)
    for kept in KEPT_LOADER_CLASSES:
        pyvips.operation_block_set(kept, False)


def vips_message(exc: pyvips.Error) -> str:
    """Return libvips' reason for `exc` on one line, without pyvips' 'unable to call' preamble."""
    detail = " ".join(line.strip() for line in (exc.detail or "").splitlines() if line.strip())
    return detail or exc.message
