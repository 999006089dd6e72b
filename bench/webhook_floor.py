"""The floor of `webhook_ratio_bench.py`: a bare Flask route that only verifies Stripe's signature.

    gunicorn bench.webhook_floor:app        (STRIPE_WEBHOOK_SECRET in the environment)

No database, no Redis, no logging of its own: what any webhook route must do at least, under the
same gunicorn settings as the shop.
"""

from __future__ import annotations

import os

import stripe
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

app = Flask(__name__)
SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")


@app.post("/webhooks/stripe")
def stripe_webhook() -> ResponseReturnValue:
    """Verify the signature on the raw body, as the shop does, and answer."""
    payload = request.get_data(cache=False)
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"),
            request.headers.get("Stripe-Signature"),
            SECRET,
            tolerance=stripe.Webhook.DEFAULT_TOLERANCE,
        )
    except (stripe.SignatureVerificationError, UnicodeDecodeError):
        return jsonify(error="invalid signature"), 400
    return jsonify(received=True, result="verified")


@app.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Ready."""
    return jsonify(ok=True)
