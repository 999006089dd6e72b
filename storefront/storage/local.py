"""The `local` backend: files in STORAGE_DIR on this machine's disk (shared by every process)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from storefront.storage.base import (
    TEMPORARY_PREFIX,
    NotInStorage,
    StorageError,
    StoredObject,
    check_key,
)

log = logging.getLogger("smi.storage")


class LocalStorage:
    """Objects as files under one root folder; writes land by an atomic rename."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """The file of `key`, refusing anything that would lead outside the root."""
        root = self.root.resolve()
        path = (root / check_key(key)).resolve()
        if root not in path.parents:
            raise ValueError(f"key escapes storage: {key!r}")
        return path

    def stat(self, key: str) -> StoredObject | None:
        """The file's size and modification time, or None when there is none."""
        try:
            found = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        modified = dt.datetime.fromtimestamp(found.st_mtime, dt.UTC)
        return StoredObject(key, found.st_size, modified)

    def put_file(self, key: str, source: Path, content_type: str) -> StoredObject:
        """Move `source` beside its place under a temporary name, then rename it into place."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}{target.suffix}")
        try:
            shutil.move(source, temporary)  # a rename on one file system, else a copy
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        stored = self.stat(key)
        assert stored is not None
        return stored

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """The stored file itself: no copy is needed on this machine."""
        path = self.path(key)
        if not path.is_file():
            raise NotInStorage(f"{key} is not in storage")
        yield path

    def open(self, key: str) -> BinaryIO:
        """The file, opened for reading."""
        try:
            return self.path(key).open("rb")
        except FileNotFoundError:
            raise NotInStorage(f"{key} is not in storage") from None

    def delete(self, key: str) -> int:
        """Remove the file, and its job's folder when that is left empty."""
        path = self.path(key)
        size = path.stat().st_size if path.is_file() else 0
        path.unlink(missing_ok=True)
        if path.parent.parent == self.root.resolve() / "deliveries":
            try:
                path.parent.rmdir()
            except OSError:
                pass  # not empty, or already gone
        return size

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every file under the root whose key starts with `prefix`, in key order."""
        root = self.root.resolve()
        start = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
        if not start.is_dir():
            return
        for directory, subdirs, files in os.walk(start):
            subdirs.sort()
            for name in sorted(files):
                key = (Path(directory) / name).relative_to(root).as_posix()
                if key.startswith(prefix):
                    found = self.stat(key)
                    if found is not None:
                        yield found

    def download_url(
        self, key: str, seconds: int, *, filename: str | None = None, content_type: str = ""
    ) -> str | None:
        """None: the app (or nginx) serves local files itself."""
        return None

    def local_path(self, key: str) -> Path | None:
        """The file's path."""
        return self.path(key)

    def check(self) -> None:
        """The root exists and a file can be written in it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TEMPORARY_PREFIX}probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"cannot write in {self.root}: {exc.strerror}") from exc

    def remove_abandoned_uploads(
        self, older_than: dt.datetime, dry_run: bool
    ) -> list[StoredObject]:
        """Temporary files and folders a writer left under the root."""
        root = self.root.resolve()
        found = []
        for path in _temporary_files(root):
            try:
                modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
                files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
                size = sum(p.stat().st_size for p in files)
            except OSError:
                continue
            if modified >= older_than:
                continue
            found.append(StoredObject(path.relative_to(root).as_posix(), size, modified))
            if dry_run:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return found


def _temporary_files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        for name in sorted(subdirs):
            if name.startswith(TEMPORARY_PREFIX):
                subdirs.remove(name)
                yield here / name
        for name in sorted(files):
            if name.startswith(TEMPORARY_PREFIX):
                yield here / name
