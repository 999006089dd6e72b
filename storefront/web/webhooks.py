"""Webhooks from Stripe: verified on the raw body, applied once."""

from __future__ import annotations

import json
import logging

import stripe
from flask import Blueprint, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError

from storefront.extensions import csrf
from storefront.jobs import metrics
from storefront.jobs.stripe_api import CheckoutUnavailable
from storefront.jobs.stripe_events import handle_event
from storefront.jobs.upsampler_links import accept_callback

log = logging.getLogger("smi.webhooks")

bp = Blueprint("webhooks", __name__)


@bp.post("/webhooks/stripe")
@csrf.exempt
def stripe_webhook() -> ResponseReturnValue:
    """Verify the signature, apply the event, and answer 2xx only once it is committed."""
    payload = request.get_data(cache=False)
    secret = current_app.config.get("STRIPE_WEBHOOK_SECRET")
    if not secret:
        log.error("STRIPE_WEBHOOK_SECRET is not set; refusing webhooks")
        return jsonify(error="webhooks are not configured"), 503
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"),
            request.headers.get("Stripe-Signature"),
            secret,
            tolerance=stripe.Webhook.DEFAULT_TOLERANCE,  # without it, old replays would pass
        )
        event = json.loads(payload)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError):
        log.warning("stripe webhook refused: bad signature or body")
        metrics.count(metrics.WEBHOOK_EVENTS, type="unverified", outcome="rejected")
        return jsonify(error="invalid signature"), 400
    if not isinstance(event, dict):
        metrics.count(metrics.WEBHOOK_EVENTS, type="unverified", outcome="rejected")
        return jsonify(error="invalid event"), 400
    try:
        outcome = handle_event(event)
    except SQLAlchemyError:
        log.exception("stripe_event=%s could not be stored; Stripe will retry", event.get("id"))
        metrics.count(metrics.WEBHOOK_EVENTS, type=str(event.get("type")), outcome="failed")
        return jsonify(error="temporarily unavailable"), 503
    except (stripe.StripeError, CheckoutUnavailable) as exc:
        # Applying it needed a question to Stripe (a refund before its payment): ask again later.
        log.warning(
            "stripe_event=%s needs Stripe, unreachable: %s", event.get("id"), type(exc).__name__
        )
        metrics.count(metrics.WEBHOOK_EVENTS, type=str(event.get("type")), outcome="failed")
        return jsonify(error="temporarily unavailable"), 503
    return jsonify(received=True, result=outcome.note)


@bp.post("/webhooks/upsampler/<job_id>/<signature>")
@csrf.exempt
def upsampler_callback(job_id: str, signature: str) -> ResponseReturnValue:
    """Upsampler says a job ended. The body is not trusted: a task asks Upsampler itself."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not accept_callback(app, job_id, signature):
        abort(404)
    return jsonify(received=True)
