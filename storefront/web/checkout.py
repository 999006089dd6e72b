"""The Buy button's target: validates the form and sends the buyer to Stripe Checkout."""

from __future__ import annotations

from flask import Blueprint, redirect, request
from flask.typing import ResponseReturnValue

from storefront.catalog.library import find_attachment
from storefront.jobs.checkout import create_checkout
from storefront.jobs.stripe_api import CheckoutUnavailable
from storefront.web.errors import render_error
from storefront.web.forms import CheckoutForm
from storefront.web.orders import remember_order
from storefront.web.shop import render_image_page

bp = Blueprint("checkout", __name__)


@bp.post("/checkout")
def start() -> ResponseReturnValue:
    """Create the job and its Checkout Session, then send the buyer to Stripe (303)."""
    form = CheckoutForm()
    attachment = find_attachment(form.attachment_id.data or "")
    if attachment is None:
        return render_error(400, "That image isn't in the catalog. Go back and choose another.")
    if not form.validate():
        return render_image_page(attachment, form, status=400)
    try:
        job, url = create_checkout(
            attachment,
            form.resolution.data,
            form.email.data or "",
            user_agent=request.headers.get("User-Agent", ""),
        )
    except ValueError as exc:
        form.resolution.errors = [str(exc)]
        return render_image_page(attachment, form, status=400)
    except CheckoutUnavailable:
        return render_error(
            503,
            "We couldn't reach our payment provider, so nothing was charged. "
            "Please try again in a few minutes.",
        )
    remember_order(job.job_id)
    return redirect(url, code=303)
