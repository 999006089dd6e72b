"""The Buy button's target: validates the form and sends the buyer to Stripe Checkout."""

from __future__ import annotations

from flask import Blueprint, redirect, request, session
from flask.typing import ResponseReturnValue
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from storefront import settings
from storefront.catalog.library import find_attachment
from storefront.extensions import limiter
from storefront.jobs.checkout import start_checkout
from storefront.jobs.stripe_api import CheckoutUnavailable
from storefront.web.errors import render_error
from storefront.web.forms import CheckoutForm
from storefront.web.orders import remember_order
from storefront.web.shop import render_image_page

bp = Blueprint("checkout", __name__)

TOO_MANY_CHECKOUTS = _l(
    "You've pressed Buy many times in a short while, so we've paused it for this connection. "
    "Nothing was charged. Wait a few minutes, then try again."
)


def _too_many_checkouts() -> str:
    return str(TOO_MANY_CHECKOUTS)


def _checkout_rate_limit() -> str:
    return str(settings.get("CHECKOUT_RATE_LIMIT"))


@bp.post("/checkout")
@limiter.limit(_checkout_rate_limit, error_message=_too_many_checkouts)
def start() -> ResponseReturnValue:
    """Send the buyer to Stripe (303): to the session this browser opened for the same order while
    it is open, else to a new job's. Limited per client address (CHECKOUT_RATE_LIMIT)."""
    form = CheckoutForm()
    attachment = find_attachment(form.attachment_id.data or "")
    if attachment is None:
        return render_error(400, _("That image isn't in the catalog. Go back and choose another."))
    if not form.validate():
        return render_image_page(attachment, form, status=400)
    remembered = [str(job_id) for job_id in session.get("orders", [])]
    try:
        job, url = start_checkout(
            attachment,
            form.resolution.data,
            form.email.data or "",
            remembered=remembered,
            user_agent=request.headers.get("User-Agent", ""),
            locale=str(get_locale() or "en"),
        )
    except ValueError as exc:
        form.resolution.errors = [str(exc)]
        return render_image_page(attachment, form, status=400)
    except CheckoutUnavailable:
        return render_error(
            503,
            _(
                "We couldn't reach our payment provider, so nothing was charged. "
                "Please try again in a few minutes."
            ),
        )
    if job.job_id not in remembered:
        remember_order(job.job_id)
    return redirect(url, code=303)
