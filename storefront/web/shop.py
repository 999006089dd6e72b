"""The catalog pages a buyer browses: posts, images and their prices."""

from __future__ import annotations

from flask import Blueprint, Flask, abort, current_app, render_template, request, url_for
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError

from storefront import funnel
from storefront.catalog.library import (
    MAX_ID,
    PREVIEW_SIZES,
    PREVIEW_WIDTHS,
    CatalogImage,
    catalog_post,
    catalog_posts,
    ensure_preview,
    image_for_page,
    last_read_image,
    srcset_widths,
)
from storefront.extensions import db
from storefront.images import fitted_size
from storefront.jobs.offers import ENGINE_LABELS, image_offers
from storefront.jobs.samples import page_samples, sample_for
from storefront.models import Attachment
from storefront.queues import redis_connection, versions_with
from storefront.storage import backend
from storefront.web.forms import CheckoutForm
from storefront.web.page_cache import page_key, render_kept
from storefront.web.stored_files import send_stored

bp = Blueprint("shop", __name__)


@bp.get("/")
def index() -> ResponseReturnValue:
    """The catalog: every post with its images."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return render_kept(
        page_key("catalog"),
        lambda: render_template("shop/index.html", posts=catalog_posts(app)),
        shareable=True,
    )


@bp.get("/posts/<slug>")
def post(slug: str) -> ResponseReturnValue:
    """One post with its images."""
    found = catalog_post(current_app._get_current_object(), slug)  # type: ignore[attr-defined]
    if found is None:
        abort(404)
    return render_kept(
        page_key("post"), lambda: render_template("shop/post.html", post=found), shareable=True
    )


def render_image_page(
    attachment: Attachment | CatalogImage,
    form: CheckoutForm | None = None,
    status: int = 200,
    cancelled: bool = False,
) -> ResponseReturnValue:
    """The image page: preview, offers and the Buy form (with its errors, if any). Kept rendered
    (storefront/web/page_cache.py) while it is the page every visitor gets."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    all_offers = image_offers(attachment)
    image = (
        attachment if isinstance(attachment, CatalogImage) else image_for_page(app, attachment.id)
    )
    samples = page_samples(app, image, all_offers) if image is not None else []
    key = None
    if form is None and not cancelled and image is attachment:
        key = page_key("image", tuple(samples))

    def render() -> str:
        shown = form or CheckoutForm(attachment_id=str(attachment.id))
        available = [offer for offer in all_offers if offer.available]
        if available and shown.resolution.data not in {o.quote.resolution for o in available}:
            shown.resolution.data = available[0].quote.resolution
        return render_template(
            "shop/image.html",
            attachment=attachment,
            offers=all_offers,
            engine_labels=ENGINE_LABELS,
            available=available,
            samples=samples,
            form=shown,
            currency=app.config["CURRENCY"],
            cancelled=cancelled,
        )

    return render_kept(key, render), status


@bp.get(f"/images/<int(max={MAX_ID}):attachment_id>")
def image(attachment_id: int) -> ResponseReturnValue:
    """One image with each resolution's size and price, and the Buy form."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    image = _counted_view(app, attachment_id, request.headers.get("User-Agent", ""))
    if image is None:
        abort(404)
    return render_image_page(image, cancelled=request.args.get("cancelled") == "1")


def _counted_view(app: Flask, attachment_id: int, user_agent: str) -> CatalogImage | None:
    """The image a page shows (None: a 404), its view by a person counted once.

    When this process has a copy of the image, the view is pushed to the funnel's buffer in the
    round trip that reads the catalog version (storefront/queues.py `versions_with`), with the
    copy's post; it is taken back if the version in force says the image is gone. Otherwise,
    or with Redis unreachable, the view is recorded once the image is known, as it always was.
    """
    guess = last_read_image(app, attachment_id)
    view = None
    if guess is not None and not funnel.is_bot(user_agent):
        view = funnel.new_image_view(attachment_id=attachment_id, post_id=guess.post_id)
        entry = funnel.buffer_entry(view)
        try:
            versions_with(app, lambda pipe: pipe.rpush(funnel.BUFFER_KEY, entry))
        except RedisError:
            pass  # recorded below under the same id: counted once, whether it arrived or not
        else:
            image = image_for_page(app, attachment_id)
            if image is not None and image.post_id == view.post_id:
                return image
            funnel.withdraw_image_view(redis_connection(app), view)
            view = None
    image = image_for_page(app, attachment_id)
    if image is not None:
        funnel.record_image_view(
            redis_connection(app),
            attachment_id=image.id,
            post_id=image.post_id,
            user_agent=user_agent,
            view=view if view is not None and view.post_id == image.post_id else None,
        )
    return image


@bp.get(f"/images/<int(max={MAX_ID}):attachment_id>/preview/<size>.jpg")
def preview(attachment_id: int, size: str) -> ResponseReturnValue:
    """A web-sized JPEG of an image (originals are never served here)."""
    if size not in PREVIEW_SIZES and size not in PREVIEW_WIDTHS:
        abort(404)
    attachment = db.get_or_404(Attachment, attachment_id)
    stored = ensure_preview(current_app._get_current_object(), attachment, size)  # type: ignore[attr-defined]
    return send_stored(stored, "image/jpeg", max_age=86400)


@bp.app_template_global()
def preview_srcset(image: Attachment | CatalogImage) -> str:
    """An image's `srcset`: its previews of 480, 1200 and 2400 px wide, as far as it reaches
    (each made when first asked for)."""
    return ", ".join(
        f"{url_for('shop.preview', attachment_id=image.id, size=size)} {width}w"
        for size, width in srcset_widths(image.width)
    )


@bp.app_template_global()
def preview_size(image: Attachment | CatalogImage, size: str) -> tuple[int, int]:
    """The (width, height) of an image's square-bounded preview (`thumb` or `large`)."""
    return fitted_size(image.width, image.height, PREVIEW_SIZES[size])


@bp.get(f"/images/<int(max={MAX_ID}):attachment_id>/samples/<name>.jpg")
def sample(attachment_id: int, name: str) -> ResponseReturnValue:
    """A before/after sample: `4x` the engine's output for a region, `4x-plain` the same region
    enlarged plainly; 404 until it is made."""
    resolution, _, kind = name.partition("-")
    if kind not in ("", "plain"):
        abort(404)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    found = sample_for(app, attachment_id, resolution)
    if found is None:
        abort(404)
    stored = backend(app).stat(found.plain_key if kind else found.engine_key)
    if stored is None:
        abort(404)
    return send_stored(stored, "image/jpeg", max_age=86400)
