"""The Buy button's target: validates the form and sends the buyer to Stripe Checkout."""

from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from storefront.errors import render_error

bp = Blueprint("checkout", __name__)


@bp.post("/checkout")
def start() -> ResponseReturnValue:
    """Start a Checkout Session for the chosen image and resolution."""
    return render_error(503, "Payments are not set up on this shop yet.")
