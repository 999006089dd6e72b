"""A local Stripe-compatible server for development and tests (never part of the production app).

It speaks the subset of Stripe's HTTP API the storefront uses (Checkout Sessions, PaymentIntents,
refunds), serves a hosted pay page (with a promotion code field and a fixed automatic tax rate,
`--tax-percent`), and delivers signed webhooks, so the real `stripe` SDK works
against it with only the API base changed (`STRIPE_API_BASE`).

Command line::

    python -m devservers.stripe_local --port 12111 \
        --webhook-url http://127.0.0.1:5000/webhooks/stripe --webhook-secret whsec_dev

In process (tests)::

    with start_server(webhook_url=url, webhook_secret="whsec_test", retry_scale=0.01) as local:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": local.url})
        ...
        local.pay(session_id)           # or POST {local.url}/_local/checkout/sessions/<id>/pay
        local.wait_idle()               # until every webhook delivery is done

The `/_local/...` endpoints (see `control.py`) drive the same actions over HTTP; promotion codes
are made with `python -m devservers.stripe_local promo create SAVE20 --percent-off 20`.
"""

from .server import LocalStripe, create_app, start_server
from .store import StripeState
from .webhooks import sign

__all__ = ["LocalStripe", "StripeState", "create_app", "sign", "start_server"]
