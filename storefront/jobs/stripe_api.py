"""The app's Stripe client (pointed at STRIPE_API_BASE when set) and the calls every step shares."""

from __future__ import annotations

from typing import Any

import stripe
from flask import Flask, current_app


class CheckoutUnavailable(Exception):
    """Stripe could not be reached or is not configured; nothing was charged."""


def stripe_client(app: Flask | None = None) -> stripe.StripeClient:
    """The app's Stripe client, made once per app."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    client = app.extensions.get("smi_stripe")
    if client is None:
        key = app.config.get("STRIPE_SECRET_KEY")
        if not key:
            raise CheckoutUnavailable("STRIPE_SECRET_KEY is not set")
        base = app.config.get("STRIPE_API_BASE")
        http_client = stripe.RequestsClient(timeout=20)
        client = stripe.StripeClient(
            key,
            base_addresses={"api": base} if base else None,
            http_client=http_client,
            max_network_retries=2,
        )
        app.extensions["smi_stripe"] = client
        app.extensions["smi_stripe_http"] = http_client
    return client


def retrieve_session(session_id: str) -> dict[str, Any]:
    """The Checkout Session as Stripe has it now, as a plain dict."""
    return stripe_client().v1.checkout.sessions.retrieve(session_id).to_dict()


def expire_session(session_id: str) -> None:
    """Close a Checkout Session so that it can no longer be paid."""
    stripe_client().v1.checkout.sessions.expire(session_id)


def retrieve_payment_intent(intent_id: str) -> dict[str, Any]:
    """The PaymentIntent as Stripe has it now (its metadata names the job), as a plain dict."""
    return stripe_client().v1.payment_intents.retrieve(intent_id).to_dict()
