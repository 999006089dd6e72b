"""Factories for rows: posts, attachments and jobs with sensible defaults."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyvips
from flask import Flask

from storefront.extensions import db
from storefront.models import Attachment, Job, Post
from storefront.storage import backend, temporary_path

_counter = itertools.count(1)


def resolve(app: Flask, key: str) -> Path:
    """The file of a storage key, with the local backend (tests that look at files on disk)."""
    path = backend(app).local_path(key)
    assert path is not None, "this test needs STORAGE_BACKEND=local"
    return path


def store_bytes(app: Flask, key: str, data: bytes, content_type: str = "image/jpeg") -> None:
    """Put `data` in storage under `key`, whichever the backend."""
    source = temporary_path(app)
    source.write_bytes(data)
    backend(app).put_file(key, source, content_type)


def make_post(**fields: Any) -> Post:
    """A post, added and flushed."""
    number = next(_counter)
    values: dict[str, Any] = {"slug": f"post-{number}", "title": f"Post {number}", "body": ""}
    values.update(fields)
    post = Post(**values)
    db.session.add(post)
    db.session.flush()
    return post


def write_test_image(path: Path, width: int, height: int, fmt: str = "jpg") -> Path:
    """Write a smooth colour gradient image of the given size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    xyz = pyvips.Image.xyz(width, height)
    red = xyz[0] * (255.0 / max(width - 1, 1))
    green = xyz[1] * (255.0 / max(height - 1, 1))
    blue = (red + green) / 2
    image = red.bandjoin([green, blue]).cast("uchar").copy(interpretation="srgb")
    image.write_to_file(str(path))
    return path


def make_attachment(app: Flask, post: Post | None = None, **fields: Any) -> Attachment:
    """An image in storage and its row, added and flushed."""
    post = post or make_post()
    width = fields.pop("width", 200)
    height = fields.pop("height", 150)
    number = next(_counter)
    relative = f"originals/{post.slug}/image-{number}.jpg"
    source = write_test_image(temporary_path(app, ".jpg"), width, height)
    stored = backend(app).put_file(relative, source, "image/jpeg")
    values: dict[str, Any] = {
        "post": post,
        "file_path": relative,
        "original_filename": f"image-{number}.jpg",
        "mime_type": "image/jpeg",
        "width": width,
        "height": height,
        "file_size": stored.size,
        "alt_text": f"Test image {number}",
        "title": f"Image {number}",
        "for_sale": True,
    }
    values.update(fields)
    attachment = Attachment(**values)
    db.session.add(attachment)
    db.session.flush()
    return attachment


def make_job(attachment: Attachment, **fields: Any) -> Job:
    """A job for `attachment`, awaiting payment unless told otherwise; added and flushed."""
    values: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "post_id": attachment.post_id,
        "attachment_id": attachment.id,
        "image_url": f"/images/{attachment.id}",
        "image_width": attachment.width,
        "image_height": attachment.height,
        "resolution": "4x",
        "email": "buyer@example.com",
        "amount_charged": Decimal("0.50"),
        "amount_cost": Decimal("0.04"),
        "credits_used": 1,
        "currency": "usd",
    }
    values.update(fields)
    job = Job(**values)
    db.session.add(job)
    db.session.flush()
    return job
