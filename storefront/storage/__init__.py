"""Where originals, previews and delivered files live: a folder (`local`) or an S3 bucket (`s3`).

Files are named by keys such as `originals/<post>/<name>`, `previews/<size>/<id>.jpg` and
`deliveries/<job_id>/<name>`; the database keeps the keys. Everything else goes through the
`Storage` interface of `backend(app)`: the web app and the workers need no folder in common
when the backend is `s3`. Work in progress lives in each process's own WORK_DIR.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from flask import Flask

from storefront.storage.base import (
    TEMPORARY_PREFIX,
    NotInStorage,
    Storage,
    StorageError,
    StoredObject,
    check_key,
    safe_filename,
    temporary_file,
)
from storefront.storage.local import LocalStorage

__all__ = [
    "NotInStorage",
    "TEMPORARY_PREFIX",
    "Storage",
    "StorageError",
    "StoredObject",
    "backend",
    "check_key",
    "remove_stored_file",
    "safe_filename",
    "temporary_file",
    "temporary_path",
    "work_dir",
]


def work_dir(app: Flask) -> Path:
    """This process's own folder for work in progress (WORK_DIR, default the system's temp dir)."""
    folder = Path(app.config.get("WORK_DIR") or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def temporary_path(app: Flask, suffix: str = "") -> Path:
    """A fresh, empty file in WORK_DIR for work in progress; the caller removes it."""
    return temporary_file(work_dir(app), suffix)


_backends_lock = threading.Lock()


def backend(app: Flask) -> Storage:
    """The app's storage backend, made once per app and process (a forked worker makes its own)."""
    made: dict[int, Storage] = app.extensions.setdefault("smi_storage", {})
    found = made.get(os.getpid())
    if found is None:
        with _backends_lock:
            found = made.get(os.getpid())
            if found is None:
                found = made[os.getpid()] = _make_backend(app)
    return found


def _make_backend(app: Flask) -> Storage:
    config = app.config
    if config["STORAGE_BACKEND"] == "s3":
        from storefront.storage.s3 import S3Storage, S3Target  # boto3 only where it is used

        target = S3Target(
            bucket=config["S3_BUCKET"],
            prefix=config["S3_PREFIX"],
            endpoint_url=config["S3_ENDPOINT_URL"] or None,
            region=config["AWS_DEFAULT_REGION"] or None,
            access_key=config["AWS_ACCESS_KEY_ID"] or None,
            secret_key=config["AWS_SECRET_ACCESS_KEY"] or None,
        )
        return S3Storage(target, work_dir(app))
    return LocalStorage(Path(config["STORAGE_DIR"]))


def remove_stored_file(app: Flask, key: str) -> int:
    """Delete a stored file if it is there; the bytes freed (0 for a key outside storage)."""
    try:
        return backend(app).delete(check_key(key))
    except ValueError:
        return 0
