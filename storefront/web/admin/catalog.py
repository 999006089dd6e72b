"""Catalog: posts, their images, uploads, and removal of images no paid job needs."""

from __future__ import annotations

from typing import TypeVar

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from storefront.catalog.editing import (
    CatalogError,
    paid_job_count,
    removal_blocker,
    remove_image,
    save_post,
    update_image,
    upload_image,
)
from storefront.catalog.library import MAX_ID, posts_with_images
from storefront.extensions import db
from storefront.jobs.samples import queue_samples
from storefront.models import Attachment, Post
from storefront.web.admin.base import admin_name, bp
from storefront.web.admin.forms import ConfirmForm, ImageForm, PostForm, UploadForm

ModelT = TypeVar("ModelT", Post, Attachment)


def _get_or_404(model: type[ModelT], ident: int) -> ModelT:
    """The row with this id, or 404: an id larger than any the database holds is not found."""
    if ident > MAX_ID:
        abort(404)
    return db.get_or_404(model, ident)


@bp.get("/catalog")
def catalog() -> ResponseReturnValue:
    """Every post with its images."""
    posts = posts_with_images()
    return render_template("admin/catalog.html", posts=posts)


@bp.route("/catalog/posts/new", methods=["GET", "POST"])
def post_new() -> ResponseReturnValue:
    """Create a post."""
    form = PostForm()
    if form.validate_on_submit():
        try:
            post = save_post(
                None,
                form.title.data or "",
                form.slug.data or "",
                form.body.data or "",
                admin_name(),
            )
        except CatalogError as exc:
            return render_template(
                "admin/post_form.html", form=form, post=None, error=str(exc)
            ), 400
        flash(f"Post “{post.title}” created. Add its images below.", "success")
        return redirect(url_for("admin.post_edit", post_id=post.id), 303)
    status = 400 if request.method == "POST" else 200
    return render_template("admin/post_form.html", form=form, post=None), status


def _upload_form() -> UploadForm:
    form = UploadForm()
    if request.method == "GET":
        form.for_sale.data = True
    return form


@bp.route("/catalog/posts/<int:post_id>", methods=["GET", "POST"])
def post_edit(post_id: int) -> ResponseReturnValue:
    """Change a post; its images, and a form to upload one more."""
    post = _get_or_404(Post, post_id)
    form = PostForm(obj=post)
    if form.validate_on_submit():
        try:
            save_post(
                post,
                form.title.data or "",
                form.slug.data or "",
                form.body.data or "",
                admin_name(),
            )
        except CatalogError as exc:
            return _render_post(post, form, UploadForm(formdata=None), str(exc), 400)
        flash("Post saved.", "success")
        return redirect(url_for("admin.post_edit", post_id=post.id), 303)
    status = 400 if request.method == "POST" else 200
    upload = UploadForm(formdata=None)
    upload.for_sale.data = True
    return _render_post(post, form, upload, None, status)


def _render_post(
    post: Post, form: PostForm, upload: UploadForm, error: str | None, status: int
) -> ResponseReturnValue:
    return render_template(
        "admin/post_form.html", post=post, form=form, upload=upload, error=error
    ), status


@bp.post("/catalog/posts/<int:post_id>/images")
def image_upload(post_id: int) -> ResponseReturnValue:
    """Upload an image to a post: type and size checked, dimensions read, stored in storage."""
    try:
        return _upload(_get_or_404(Post, post_id))
    finally:
        # A large upload is spooled to a temporary file: close it now, not at garbage collection.
        for upload in request.files.values():
            upload.close()


def _upload(post: Post) -> ResponseReturnValue:
    upload = UploadForm()
    if not upload.validate():
        return _render_post(post, PostForm(obj=post, formdata=None), upload, None, 400)
    file = upload.image.data
    try:
        attachment = upload_image(
            current_app._get_current_object(),  # type: ignore[attr-defined]
            post,
            file.stream,
            file.filename or "",
            title=upload.title.data or "",
            alt_text=upload.alt_text.data or "",
            for_sale=bool(upload.for_sale.data),
            admin=admin_name(),
        )
    except CatalogError as exc:
        return _render_post(post, PostForm(obj=post, formdata=None), upload, str(exc), 400)
    queue_samples(attachment.id)
    flash(
        f"Image added: {attachment.width} × {attachment.height} px, "
        f"{'for sale' if attachment.for_sale else 'not for sale'}.",
        "success",
    )
    return redirect(url_for("admin.post_edit", post_id=post.id), 303)


@bp.route("/catalog/images/<int:attachment_id>", methods=["GET", "POST"])
def image_edit(attachment_id: int) -> ResponseReturnValue:
    """An image's title, alt text and whether it is for sale."""
    attachment = _get_or_404(Attachment, attachment_id)
    form = ImageForm(obj=attachment)
    error = None
    if form.validate_on_submit():
        try:
            update_image(
                attachment,
                title=form.title.data or "",
                alt_text=form.alt_text.data or "",
                for_sale=bool(form.for_sale.data),
                admin=admin_name(),
                focus=(form.focus_x.data, form.focus_y.data),
            )
        except CatalogError as exc:
            error = str(exc)
        else:
            queue_samples(attachment.id)  # made again if the focus changed; else nothing to do
            flash("Image saved.", "success")
            return redirect(url_for("admin.image_edit", attachment_id=attachment.id), 303)
    status = 400 if request.method == "POST" else 200
    return render_template(
        "admin/image_form.html",
        attachment=attachment,
        form=form,
        error=error,
        blocker=removal_blocker(attachment),
        paid_jobs=paid_job_count(attachment),
        confirm=ConfirmForm(formdata=None),
    ), status


@bp.post("/catalog/images/<int:attachment_id>/remove")
def image_remove(attachment_id: int) -> ResponseReturnValue:
    """Remove an image, unless a paid job still needs it."""
    attachment = _get_or_404(Attachment, attachment_id)
    if request.form.get("confirm") != "yes":
        abort(400)
    post_id = attachment.post_id
    try:
        remove_image(current_app._get_current_object(), attachment, admin_name())  # type: ignore[attr-defined]
    except CatalogError as exc:
        return render_template(
            "admin/image_form.html",
            attachment=attachment,
            form=ImageForm(obj=attachment, formdata=None),
            error=str(exc),
            blocker=str(exc),
            paid_jobs=paid_job_count(attachment),
            confirm=ConfirmForm(formdata=None),
        ), 409
    flash("Image removed.", "success")
    return redirect(url_for("admin.post_edit", post_id=post_id), 303)
