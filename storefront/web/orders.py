"""The buyer's order page: what they bought and how far along it is, updated live."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from storefront.jobs.state import get_job
from storefront.jobs.stripe_events import confirm_return
from storefront.models import Job
from storefront.web.forms import ResendForm
from storefront.web.my_orders import may_see

bp = Blueprint("orders", __name__)

# The newest orders a browser's signed cookie remembers.
ORDERS_IN_COOKIE = 20

# (step label, states in which it is done) in the order a buyer sees them.
STEPS = (
    (_l("Payment received"), {"pending", "processing", "completed", "failed"}),
    (_l("Upscaling"), {"completed", "failed"}),
    (_l("Ready: download link emailed"), {"completed"}),
)


def remember_order(job_id: str) -> None:
    """Let this browser open the order page: the signed session cookie lists its orders."""
    session["orders"] = [job_id, *session.get("orders", [])][:ORDERS_IN_COOKIE]


def _authorised_job(job_id: str) -> Job:
    """The job, if this browser bought it (cookie) or came back from Stripe with its session id."""
    job = get_job(job_id)
    if job is None:
        abort(404)
    session_id = request.args.get("session_id", "")
    # This browser bought it, or is signed in to My orders with the order's email address.
    owns = job.job_id in session.get("orders", []) or may_see(job)
    came_back = bool(session_id) and session_id == job.stripe_checkout_session_id
    if not (owns or came_back):
        # The same answer as for an unknown id: a job id alone reveals nothing.
        abort(404)
    if came_back and not owns:
        remember_order(job.job_id)
    return job


def order_state(job: Job) -> dict[str, Any]:
    """What the order page says about a job, in the page's language; never a download link."""
    status = job.status or "awaiting_payment"
    email = job.email or _("the address you gave Stripe")
    messages = {
        "awaiting_payment": (_("Confirming your payment…"), _("This usually takes a few seconds.")),
        "pending": (
            _("Paid: in the queue"),
            _("Your image is waiting for the next free upscaler."),
        ),
        "processing": (_("Upscaling your image…"), _("Large images can take a few minutes.")),
        "completed": (
            _("Ready: check your email"),
            _("We've sent the download link to %(email)s.", email=email),
        ),
        "failed": (
            _("We couldn't process your image"),
            _("You have been refunded in full; the refund shows on your statement in a few days."),
        ),
        "abandoned": (
            _("This checkout was not completed"),
            _("Nothing was charged. You can go back to the image and try again."),
        ),
    }
    headline, detail = messages[status]
    if job.payment_status == "refunded" and status != "failed":
        headline = _("Refunded")
        detail = _("This order was refunded; its download link no longer works.")
    steps = []
    current_found = False
    for label, done_in in STEPS:
        if status in done_in:
            state = "done"
        elif status in ("failed", "abandoned"):
            state = "bad" if not current_found and status == "failed" else "todo"
            current_found = True
        elif not current_found:
            state, current_found = "current", True
        else:
            state = "todo"
        steps.append({"label": str(label), "state": state})
    return {
        "status": status,
        "payment_status": job.payment_status,
        "headline": headline,
        "detail": detail,
        "steps": steps,
        "final": status in ("completed", "failed", "abandoned"),
    }


@bp.get("/orders/<job_id>")
def show(job_id: str) -> ResponseReturnValue:
    """The order page; fulfils the payment itself if the buyer beat Stripe's webhook here.

    Back from Stripe with `?session_id=`, which is enough to open the order, the browser is sent
    on (303) to the page's address without it, once its cookie remembers the order: the id does
    not stay in the address bar, the history or a Referer.
    """
    job = _authorised_job(job_id)
    session_id = request.args.get("session_id", "")
    job = confirm_return(job, session_id)
    if session_id:
        return redirect(url_for("orders.show", job_id=job.job_id), 303)
    resend_form = ResendForm(job_id=job.job_id)
    return render_template(
        "orders/show.html", job=job, state=order_state(job), resend_form=resend_form
    )


@bp.get("/orders/<job_id>/status")
def status(job_id: str) -> ResponseReturnValue:
    """The order's state as JSON, for the page's live updates."""
    job = _authorised_job(job_id)
    response = order_state(job)
    return response, 200, {"Cache-Control": "no-store"}
