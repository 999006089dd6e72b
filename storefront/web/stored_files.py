"""Answering with a stored file, whichever backend holds it."""

from __future__ import annotations

from flask import Response, current_app, send_file

from storefront.storage import StoredObject, backend


def send_stored(stored: StoredObject, mimetype: str, *, max_age: int) -> Response:
    """A stored file as the answer: from disk with the local backend, else streamed from the
    bucket; either way with an ETag and Last-Modified, so a browser asks again cheaply."""
    storage = backend(current_app._get_current_object())  # type: ignore[attr-defined]
    path = storage.local_path(stored.key)
    if path is not None:
        return send_file(path, mimetype=mimetype, conditional=True, max_age=max_age)
    response = send_file(
        storage.open(stored.key),
        mimetype=mimetype,
        conditional=True,
        etag=f"{stored.size:x}-{int(stored.modified.timestamp()):x}",
        last_modified=stored.modified,
        max_age=max_age,
    )
    response.content_length = stored.size
    return response
