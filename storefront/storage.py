"""Files on disk under STORAGE_DIR: originals, previews and deliveries."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from flask import Flask

log = logging.getLogger("smi.storage")

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def storage_root(app: Flask) -> Path:
    """The root folder of every stored file."""
    return Path(app.config["STORAGE_DIR"])


def safe_filename(name: str) -> str:
    """A file name with only letters, digits, dot, dash and underscore."""
    cleaned = SAFE_NAME.sub("-", Path(name).name).strip(".-")
    return cleaned or "file"


def resolve(app: Flask, relative: str) -> Path:
    """The absolute path of a stored file, refusing anything outside the root."""
    root = storage_root(app).resolve()
    path = (root / relative).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"path escapes storage: {relative!r}")
    return path


def remove_stored_file(app: Flask, relative: str) -> int:
    """Delete a stored file and its folder if that is left empty; the bytes freed."""
    try:
        path = resolve(app, relative)
    except ValueError:
        log.error("refusing to delete %r: outside storage", relative)
        return 0
    size = path.stat().st_size if path.is_file() else 0
    path.unlink(missing_ok=True)
    _remove_empty_parent(path.parent, app)
    return size


def _remove_empty_parent(folder: Path, app: Flask) -> None:
    deliveries = resolve(app, "deliveries")
    if folder.parent == deliveries:
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty, or already gone
