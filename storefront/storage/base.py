"""What every storage backend shares: the interface, stored objects, keys and errors."""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# Names of work in progress: a writer that dies leaves them behind, and cleanup removes them.
TEMPORARY_PREFIX = ".tmp-"


class StorageError(RuntimeError):
    """Storage cannot be reached or refused a request; the message says which, without secrets."""


class NotInStorage(StorageError):
    """The object asked for is not there."""


@dataclass(frozen=True)
class StoredObject:
    """A stored file: its key, its size in bytes and when it was last written (aware UTC)."""

    key: str
    size: int
    modified: dt.datetime


class Storage(Protocol):
    """What every backend offers. Keys are relative, '/'-separated, never starting with '/'."""

    name: str

    def stat(self, key: str) -> StoredObject | None:
        """The object's size and time, or None when there is none."""
        ...

    def put_file(self, key: str, source: Path, content_type: str) -> StoredObject:
        """Store a local file under `key`, whole or not at all, and remove `source`."""
        ...

    def local_copy(self, key: str) -> AbstractContextManager[Path]:
        """A local file holding the object while the `with` block runs (read-only)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The object's bytes as a stream; the caller closes it. StorageError when missing."""
        ...

    def delete(self, key: str) -> int:
        """Remove the object if there is one; the bytes freed."""
        ...

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with `prefix`."""
        ...

    def download_url(
        self, key: str, seconds: int, *, filename: str | None = None, content_type: str = ""
    ) -> str | None:
        """A URL that serves the object for `seconds`, saved as `filename`; None when the backend
        has no such URLs (the app serves the file itself)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's path on this machine's disk, for backends that have one."""
        ...

    def check(self) -> None:
        """Raise StorageError unless storage can be read and written now."""
        ...

    def remove_abandoned_uploads(
        self, older_than: dt.datetime, dry_run: bool
    ) -> list[StoredObject]:
        """Remove uploads started before `older_than` and never finished; what they held."""
        ...


def safe_filename(name: str) -> str:
    """A file name with only letters, digits, dot, dash and underscore."""
    cleaned = SAFE_NAME.sub("-", Path(name).name).strip(".-")
    return cleaned or "file"


def check_key(key: str) -> str:
    """`key` if it names an object inside storage; ValueError for '..', absolute or empty keys."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a storage key: {key!r}")
    return key


def temporary_file(folder: Path, suffix: str = "") -> Path:
    """A fresh, empty file in `folder` named as work in progress."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=folder)
    os.close(handle)
    return Path(name)
