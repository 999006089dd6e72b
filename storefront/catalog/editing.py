"""Catalog changes from the admin area: posts, uploaded images, their details, and removal."""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO

from flask import Flask
from sqlalchemy import func, select, update

from storefront import transactions
from storefront.accounts.audit import log_action
from storefront.catalog.library import (
    ImageInfo,
    add_image,
    preview_keys,
    read_image_info,
    slugify,
)
from storefront.extensions import db
from storefront.formatting import format_bytes
from storefront.models import Attachment, ImageSample, Job, Post
from storefront.storage import (
    TEMPORARY_PREFIX,
    backend,
    remove_stored_file,
    safe_filename,
    work_dir,
)

log = logging.getLogger("smi.admin")

ALLOWED_SUFFIXES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}
MAX_SIDE = 20000
MAX_MEGAPIXELS = 200
SLUG_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class CatalogError(ValueError):
    """A catalog change was refused; the message says why, and nothing changed."""


def _clean_slug(slug: str, title: str) -> str:
    slug = slug.strip().lower() or slugify(title)
    if not SLUG_PATTERN.fullmatch(slug) or len(slug) > 200:
        raise CatalogError("A slug is lowercase letters, digits and dashes, like my-trip-2026.")
    return slug


@transactions.atomic
def save_post(post: Post | None, title: str, slug: str, body: str, admin: str) -> Post:
    """Create a post (or change one); the slug must be unused. Commits."""
    title = title.strip()
    if not title or len(title) > 255:
        raise CatalogError("A post needs a title of at most 255 characters.")
    slug = _clean_slug(slug, title)
    clash = db.session.scalar(select(Post).where(Post.slug == slug))
    if clash is not None and clash is not post:
        raise CatalogError(f"The slug {slug!r} is used by another post.")
    created = post is None
    if post is None:
        post = Post(slug=slug, title=title, body=body)
        db.session.add(post)
    else:
        post.slug, post.title, post.body = slug, title, body
    db.session.flush()
    log_action(admin, "post_created" if created else "post_changed", f"post:{post.id}", title)
    transactions.commit()
    return post


def _unique_name(app: Flask, post: Post, filename: str) -> str:
    name = safe_filename(filename)
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    candidate, number = f"{stem}{suffix}", 1
    while backend(app).stat(f"originals/{post.slug}/{candidate}") is not None:
        number += 1
        candidate = f"{stem}-{number}{suffix}"
    return candidate


def _receive(stream: IO[bytes], target: Path, limit: int) -> None:
    """Copy an upload to `target`, refusing it past `limit` bytes or empty."""
    size = 0
    with target.open("wb") as handle:
        while chunk := stream.read(1024 * 1024):
            size += len(chunk)
            if size > limit:
                raise CatalogError(f"The image is larger than {format_bytes(limit)}.")
            handle.write(chunk)
    if size == 0:
        raise CatalogError("The file is empty.")


def _checked_image(source: Path, suffix: str) -> ImageInfo:
    """The image's real type and size, if it is one the shop accepts (CatalogError if not)."""
    try:
        info = read_image_info(source)
    except Exception as exc:  # pyvips raises its own Error for anything unreadable
        raise CatalogError("That file is not an image we can read.") from exc
    if info.mime_type != ALLOWED_SUFFIXES[suffix] and {
        info.mime_type,
        ALLOWED_SUFFIXES[suffix],
    } != {"image/jpeg"}:
        raise CatalogError(f"The file's name says {suffix} but its content is {info.mime_type}.")
    if max(info.width, info.height) > MAX_SIDE or info.width * info.height > MAX_MEGAPIXELS * 10**6:
        raise CatalogError(
            f"The image is {info.width} × {info.height} px; the largest accepted is "
            f"{MAX_SIDE} px a side and {MAX_MEGAPIXELS} megapixels."
        )
    return info


@transactions.atomic
def upload_image(
    app: Flask,
    post: Post,
    stream: IO[bytes],
    filename: str,
    *,
    title: str,
    alt_text: str,
    for_sale: bool,
    admin: str,
) -> Attachment:
    """Check an uploaded image (type, size, dimensions), store it like the demo ones. Commits."""
    suffix = Path(filename or "").suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise CatalogError("Upload a JPEG, PNG or WebP image (.jpg, .jpeg, .png or .webp).")
    limit = int(app.config["ADMIN_UPLOAD_MAX_BYTES"])
    folder = Path(tempfile.mkdtemp(dir=work_dir(app), prefix=f"{TEMPORARY_PREFIX}upload-"))
    try:
        source = folder / _unique_name(app, post, filename)
        _receive(stream, source, limit)
        info = _checked_image(source, suffix)
        attachment = add_image(app, post, source, title=title.strip(), alt_text=alt_text.strip())
        attachment.original_filename = (filename or source.name)[:255]
        attachment.for_sale = for_sale
        db.session.flush()
        log_action(
            admin,
            "image_uploaded",
            f"image:{attachment.id}",
            f"{attachment.file_path}, {info.width}×{info.height}",
        )
        transactions.commit()
        return attachment
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@transactions.atomic
def update_image(
    attachment: Attachment,
    *,
    title: str,
    alt_text: str,
    for_sale: bool,
    admin: str,
    focus: tuple[float | None, float | None] = (None, None),
) -> None:
    """Change an image's title, alt text, whether it is for sale and the focus point of its
    samples (both fractions, or neither for the most detailed region). Commits."""
    if len(title) > 255 or len(alt_text) > 500:
        raise CatalogError("A title has at most 255 characters, alt text at most 500.")
    if (focus[0] is None) != (focus[1] is None):
        raise CatalogError("Give both focus values (across and down), or neither.")
    if any(value is not None and not 0 <= value <= 1 for value in focus):
        raise CatalogError("A focus point is from 0 to 1.")
    changes = []
    if attachment.for_sale != for_sale:
        changes.append("for sale" if for_sale else "not for sale")
    if (attachment.focus_x, attachment.focus_y) != focus:
        changes.append(
            "sample focus automatic"
            if focus[0] is None
            else f"sample focus {focus[0]:.3f}, {focus[1]:.3f}"
        )
        attachment.focus_x, attachment.focus_y = focus
    attachment.title, attachment.alt_text, attachment.for_sale = (
        title.strip(),
        alt_text.strip(),
        for_sale,
    )
    log_action(admin, "image_changed", f"image:{attachment.id}", ", ".join(changes))
    transactions.commit()


def removal_blocker(attachment: Attachment) -> str | None:
    """Why the image must stay (a paid job still needs its original), or None."""
    needing = db.session.scalar(
        select(Job.job_id)
        .where(
            Job.attachment_id == attachment.id,
            Job.payment_status == "paid",
            db.or_(
                Job.status.in_(("pending", "processing")),
                db.and_(Job.status == "failed", Job.refunded_at.is_(None)),
            ),
        )
        .limit(1)
    )
    if needing:
        return (
            f"A paid job still needs this image (job {needing}); remove it once that job is "
            "completed or refunded."
        )
    return None


@transactions.atomic
def remove_image(app: Flask, attachment: Attachment, admin: str) -> None:
    """Remove an image no paid job needs: its row, original, previews and samples. Commits.

    Jobs that bought it keep their record (and their delivered file); they no longer point at it.
    """
    reason = removal_blocker(attachment)
    if reason:
        raise CatalogError(reason)
    relative, image_id = attachment.file_path, attachment.id
    samples = db.session.scalars(select(ImageSample).where(ImageSample.attachment_id == image_id))
    sample_files = []
    for sample in samples:
        sample_files += [sample.engine_key, sample.plain_key]
        db.session.delete(sample)
    db.session.execute(
        update(Job)
        .where(Job.attachment_id == image_id)
        .values(attachment_id=None)
        .execution_options(synchronize_session=False)
    )
    db.session.delete(attachment)
    log_action(admin, "image_removed", f"image:{image_id}", relative)
    transactions.commit()
    for key in [relative, *sample_files, *preview_keys(image_id)]:
        remove_stored_file(app, key)


def paid_job_count(attachment: Attachment) -> int:
    """How many paid (or refunded) orders bought this image."""
    return int(
        db.session.scalar(
            select(func.count(Job.id)).where(
                Job.attachment_id == attachment.id, Job.payment_status.in_(("paid", "refunded"))
            )
        )
        or 0
    )
