"""The catalog: posts and their images, the demo content, and image previews."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyvips
from flask import Flask, current_app, has_app_context
from sqlalchemy import event, select
from sqlalchemy.orm import Session, joinedload, selectinload

from storefront import transactions
from storefront.extensions import db
from storefront.images import displayed_size
from storefront.models import Attachment, ImageSample, Post
from storefront.queues import bump_version, versions
from storefront.storage import StoredObject, backend, safe_filename, temporary_path

DEMO_DIR = Path(__file__).resolve().parent / "demo" / "images"
PREVIEW_SIZES = {"thumb": 480, "large": 1200}
# The image page's srcset: `w1200` is 1200 px wide, or the original's width if that is less.
PREVIEW_WIDTHS = {"w480": 480, "w1200": 1200, "w2400": 2400}
PAGE_CACHE_SIZE = 10_000  # images per app; the cache starts again when it is full
CHANGED = "smi_catalog_changed"  # Session.info: this transaction changed a post or an image
MAX_EDGE = 10_000_000  # libvips' largest image side: "no limit" on a preview's height
MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass(frozen=True)
class DemoImage:
    """One of the demo photos and what to call it."""

    filename: str
    title: str
    alt_text: str


@dataclass(frozen=True)
class DemoPost:
    """A demo post and the photos it holds."""

    slug: str
    title: str
    body: str
    images: tuple[DemoImage, ...]


DEMO_POSTS = (
    DemoPost(
        "space",
        "Space, from the launch pad to the edge of the universe",
        "A rocket on its way up, an astronaut at work, and the deepest picture of the sky.",
        (
            DemoImage("rocket.jpg", "DSCOVR launch", "A Falcon 9 rocket lifting off in a plume"),
            DemoImage("astronaut.png", "Eileen Collins", "Astronaut Eileen Collins in her suit"),
            DemoImage(
                "hubble_deep_field.jpg",
                "Hubble eXtreme Deep Field",
                "Thousands of faint galaxies on black sky",
            ),
        ),
    ),
    DemoPost(
        "everyday",
        "Everyday moments",
        "A cup of coffee and a cat called Chelsea.",
        (
            DemoImage("coffee.png", "Coffee", "A cup of coffee with latte art on a saucer"),
            DemoImage("chelsea.png", "Chelsea the cat", "A tabby cat looking to the side"),
        ),
    ),
)


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says."""

    width: int
    height: int
    mime_type: str


def read_image_info(path: Path) -> ImageInfo:
    """Read an image's real size and type, with its EXIF orientation applied."""
    image = pyvips.Image.new_from_file(str(path), access="sequential")
    loader = str(image.get("vips-loader"))
    kind = next((name for name in MIME_TYPES if name in loader), None)
    if kind is None:
        raise ValueError(f"unsupported image type ({loader})")
    width, height = displayed_size(image)
    return ImageInfo(width, height, MIME_TYPES[kind])


def add_image(app: Flask, post: Post, source: Path, *, title: str, alt_text: str) -> Attachment:
    """Copy an image file into storage and add it to `post` (the caller commits)."""
    info = read_image_info(source)
    relative = f"originals/{post.slug}/{safe_filename(source.name)}"
    copy = temporary_path(app, source.suffix)
    try:
        shutil.copyfile(source, copy)
        stored = backend(app).put_file(relative, copy, info.mime_type)
    finally:
        copy.unlink(missing_ok=True)
    attachment = Attachment(
        post=post,
        file_path=relative,
        original_filename=source.name,
        mime_type=info.mime_type,
        width=info.width,
        height=info.height,
        file_size=stored.size,
        alt_text=alt_text,
        title=title,
        for_sale=True,
    )
    db.session.add(attachment)
    return attachment


def seed_demo(app: Flask) -> int:
    """Create the demo posts and images unless the catalog has content; return images added.

    With content already, the demo photos missing from storage are put back (storage was
    switched, say from a folder to a bucket, under the same database).
    """
    if db.session.scalar(select(Post.id).limit(1)) is not None:
        restore_demo_files(app)
        return 0
    added = 0
    for demo in DEMO_POSTS:
        post = Post(slug=demo.slug, title=demo.title, body=demo.body)
        db.session.add(post)
        for image in demo.images:
            add_image(
                app, post, DEMO_DIR / image.filename, title=image.title, alt_text=image.alt_text
            )
            added += 1
    transactions.commit()
    return added


def restore_demo_files(app: Flask) -> list[str]:
    """Put back the demo photos whose rows are there but whose files are not; their keys."""
    storage = backend(app)
    restored = []
    for demo in DEMO_POSTS:
        for image in demo.images:
            key = f"originals/{demo.slug}/{safe_filename(image.filename)}"
            row = db.session.scalar(select(Attachment.id).where(Attachment.file_path == key))
            if row is None or storage.stat(key) is not None:
                continue
            copy = temporary_path(app, Path(key).suffix)
            try:
                shutil.copyfile(DEMO_DIR / image.filename, copy)
                storage.put_file(key, copy, read_image_info(DEMO_DIR / image.filename).mime_type)
            finally:
                copy.unlink(missing_ok=True)
            restored.append(key)
    return restored


def preview_key(attachment_id: int, size: str) -> str:
    """Where, in storage, an image's preview of one size lives."""
    return f"previews/{size}/{attachment_id}.jpg"


def preview_keys(attachment_id: int) -> list[str]:
    """Every preview an image may have in storage, of every size and width."""
    return [preview_key(attachment_id, size) for size in (*PREVIEW_SIZES, *PREVIEW_WIDTHS)]


def srcset_widths(original_width: int) -> list[tuple[str, int]]:
    """The previews an image's srcset lists, as (size, width in px): each width the original
    reaches, and then one at the original's own width if it falls between two."""
    found = []
    for size, width in PREVIEW_WIDTHS.items():
        found.append((size, min(width, original_width)))
        if original_width <= width:
            break
    return found


def ensure_preview(app: Flask, attachment: Attachment, size: str) -> StoredObject:
    """A JPEG preview of `attachment`, made once (again when the original is newer) and stored:
    within a square for the PREVIEW_SIZES, of at most a width for the PREVIEW_WIDTHS."""
    if size not in PREVIEW_SIZES and size not in PREVIEW_WIDTHS:
        raise ValueError(f"unknown preview size {size!r}")
    storage = backend(app)
    key = preview_key(attachment.id, size)
    found = storage.stat(key)
    original = storage.stat(attachment.file_path)
    if found is not None and (original is None or found.modified >= original.modified):
        return found
    width = PREVIEW_SIZES.get(size) or PREVIEW_WIDTHS[size]
    height = width if size in PREVIEW_SIZES else MAX_EDGE
    made = temporary_path(app, ".jpg")
    try:
        with storage.local_copy(attachment.file_path) as source:
            thumb = pyvips.Image.thumbnail(str(source), width, height=height, size="down")
            if thumb.hasalpha():
                thumb = thumb.flatten(background=[255, 255, 255])
            thumb.jpegsave(str(made), Q=85, strip=True, optimize_coding=True, interlace=True)
        return storage.put_file(key, made, "image/jpeg")
    finally:
        made.unlink(missing_ok=True)


def sample_keys(
    attachment_id: int, resolution: str, engine: str, fingerprint: str
) -> tuple[str, str]:
    """Where, in storage, a sample's two JPEGs live: the engine's output and the plain enlargement.

    They live with the previews; the fingerprint in the name gives a remade sample new keys.
    """
    stem = f"previews/samples/{attachment_id}/{resolution}-{engine}-{fingerprint[:16]}"
    return f"{stem}.jpg", f"{stem}-plain.jpg"


def image_fingerprint(
    file_path: str,
    file_size: int,
    width: int,
    height: int,
    focus_x: float | None,
    focus_y: float | None,
) -> str:
    """What a sample was made from: the original and the focus point; a change makes new ones."""
    focus = "auto" if focus_x is None or focus_y is None else f"{focus_x:.4f},{focus_y:.4f}"
    text = f"{file_path}|{file_size}|{width}x{height}|{focus}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def attachment_fingerprint(attachment: Attachment) -> str:
    """The fingerprint of an image row as it is now."""
    return image_fingerprint(
        attachment.file_path,
        attachment.file_size,
        attachment.width,
        attachment.height,
        attachment.focus_x,
        attachment.focus_y,
    )


def slugify(text: str) -> str:
    """A URL slug made of lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "post"


# The largest id a BIGINT holds: a longer number in a URL or a form is simply not found.
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class PostLink:
    """What an image page says of its post."""

    id: int
    slug: str
    title: str


@dataclass(frozen=True)
class CatalogImage:
    """What an image page shows of an image: a copy, kept until the catalog changes."""

    id: int
    post_id: int
    title: str
    original_filename: str
    alt_text: str
    width: int
    height: int
    for_sale: bool
    post: PostLink
    updated_at: dt.datetime
    # What its samples must have been made from (see image_fingerprint).
    fingerprint: str = ""


@dataclass(frozen=True)
class ReadySample:
    """A sample that is made and stored: which engine made it, from what, and its files."""

    resolution: str
    engine: str
    fingerprint: str
    region_width: int
    region_height: int
    engine_key: str
    plain_key: str


@dataclass(frozen=True)
class CatalogPost:
    """What the catalog and a post's page show of a post: a copy, kept until the catalog changes."""

    id: int
    slug: str
    title: str
    body: str
    attachments: tuple[CatalogImage, ...]
    updated_at: dt.datetime


@dataclass
class _PageCopies:
    """One process's copies of the catalog, as of one catalog version."""

    version: int
    images: dict[int, CatalogImage | None] = field(default_factory=dict)
    posts: list[CatalogPost] | None = None
    samples: dict[int, tuple[ReadySample, ...]] = field(default_factory=dict)


def _copies(app: Flask) -> _PageCopies | None:
    """This app's copies for the catalog version in force (emptied when it changed), or None
    while Redis is unreachable (then the pages read the database each time).

    Every commit that changes a post or an image bumps the version (`track_changes`), which each
    request reads from Redis once: a change is seen at once by every process.
    """
    found = versions(app)
    if found is None:
        return None
    copies: _PageCopies | None = app.extensions.get("smi_page_copies")
    if copies is None or copies.version != found["catalog"] or len(copies.images) > PAGE_CACHE_SIZE:
        copies = app.extensions["smi_page_copies"] = _PageCopies(found["catalog"])
    return copies


def image_for_page(app: Flask, attachment_id: int) -> CatalogImage | None:
    """The image an image page shows (None if there is none), read once per catalog version."""
    copies = _copies(app)
    if copies is None:
        return _read_image(attachment_id)
    if attachment_id not in copies.images:
        copies.images[attachment_id] = _read_image(attachment_id)
    return copies.images[attachment_id]


def last_read_image(app: Flask, attachment_id: int) -> CatalogImage | None:
    """This process's copy of an image as of the catalog version it read last, without asking
    Redis whether that is still the version (None if it has none): a guess, to be checked with
    `image_for_page`."""
    copies: _PageCopies | None = app.extensions.get("smi_page_copies")
    return None if copies is None else copies.images.get(attachment_id)


def ready_samples(app: Flask, attachment_id: int) -> tuple[ReadySample, ...]:
    """The image's samples that are made, read once per catalog version: recording a sample
    bumps the version, so a page knows what is ready without asking storage."""
    copies = _copies(app)
    if copies is None:
        return _read_samples(attachment_id)
    if attachment_id not in copies.samples:
        copies.samples[attachment_id] = _read_samples(attachment_id)
    return copies.samples[attachment_id]


def _read_samples(attachment_id: int) -> tuple[ReadySample, ...]:
    rows = db.session.scalars(select(ImageSample).where(ImageSample.attachment_id == attachment_id))
    return tuple(
        ReadySample(
            row.resolution,
            row.engine,
            row.fingerprint,
            row.region_width,
            row.region_height,
            row.engine_key,
            row.plain_key,
        )
        for row in rows
    )


def catalog_posts(app: Flask) -> list[CatalogPost]:
    """Every post with its images, oldest first, as the catalog shows them (read once per
    catalog version)."""
    copies = _copies(app)
    if copies is None:
        return _read_posts()
    if copies.posts is None:
        copies.posts = _read_posts()
    return copies.posts


def catalog_post(app: Flask, slug: str) -> CatalogPost | None:
    """The post at this address, as its page shows it."""
    return next((post for post in catalog_posts(app) if post.slug == slug), None)


def _read_posts() -> list[CatalogPost]:
    return [
        CatalogPost(
            post.id,
            post.slug,
            post.title,
            post.body,
            tuple(_image_copy(attachment, post) for attachment in post.attachments),
            post.updated_at or post.created_at,
        )
        for post in posts_with_images()
    ]


def _read_image(attachment_id: int) -> CatalogImage | None:
    attachment = db.session.get(Attachment, attachment_id, options=[joinedload(Attachment.post)])
    return None if attachment is None else _image_copy(attachment, attachment.post)


def _image_copy(attachment: Attachment, post: Post) -> CatalogImage:
    return CatalogImage(
        id=attachment.id,
        post_id=attachment.post_id,
        title=attachment.title,
        original_filename=attachment.original_filename,
        alt_text=attachment.alt_text,
        width=attachment.width,
        height=attachment.height,
        for_sale=attachment.for_sale,
        post=PostLink(post.id, post.slug, post.title),
        updated_at=attachment.updated_at or attachment.created_at,
        fingerprint=attachment_fingerprint(attachment),
    )


def track_changes() -> None:
    """Bump the catalog version after every commit that added, changed or removed a post, an
    image or a sample, so that the image pages' copies are read again (called by the app
    factory)."""
    if not event.contains(Session, "after_flush", _note_catalog_flush):
        event.listen(Session, "after_flush", _note_catalog_flush)
        event.listen(Session, "after_commit", _bump_after_commit)
        event.listen(Session, "after_rollback", _forget_changes)


def _note_catalog_flush(session: Session, _context: object) -> None:
    # Still the flush's own lists here: what it wrote.
    changed = (*session.new, *session.dirty, *session.deleted)
    if any(isinstance(row, Post | Attachment | ImageSample) for row in changed):
        session.info[CHANGED] = True


def _bump_after_commit(session: Session) -> None:
    if session.info.pop(CHANGED, False) and has_app_context():
        bump_version(current_app._get_current_object(), "catalog")  # type: ignore[attr-defined]


def _forget_changes(session: Session) -> None:
    session.info.pop(CHANGED, None)


def posts_with_images() -> list[Post]:
    """Every post with its images, oldest first."""
    return list(
        db.session.scalars(select(Post).options(selectinload(Post.attachments)).order_by(Post.id))
    )


def find_attachment(raw_id: str) -> Attachment | None:
    """The image whose id a form gave as text; None for anything that is not one of ours."""
    raw_id = raw_id.strip()
    if not raw_id.isdigit() or int(raw_id) > MAX_ID:
        return None
    return db.session.get(Attachment, int(raw_id))
