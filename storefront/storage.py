"""Files on disk under STORAGE_DIR: originals, previews and deliveries."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from flask import Flask

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


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
