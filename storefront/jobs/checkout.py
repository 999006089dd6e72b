"""The Buy button's service: price the order, create the job, and open its Checkout Session (or
send the buyer back to the one this browser opened for the same order, while it is open)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import stripe
from flask import current_app
from sqlalchemy import select

from storefront import funnel, settings, transactions
from storefront.catalog.pricing import Quote, to_minor_units
from storefront.extensions import db
from storefront.jobs import metrics
from storefront.jobs.offers import offer_for
from storefront.jobs.state import record_event, transition
from storefront.jobs.stripe_api import CheckoutUnavailable, retrieve_session, stripe_client
from storefront.models import Attachment, Job, utcnow

log = logging.getLogger("smi.checkout")

# A session about to expire is not worth going back to: the buyer needs time to pay.
REUSE_MARGIN = dt.timedelta(minutes=5)


def start_checkout(
    attachment: Attachment,
    resolution: str,
    email: str,
    *,
    remembered: Sequence[str],
    user_agent: str | None,
    locale: str = "en",
) -> tuple[Job, str]:
    """Buy pressed: the open session of the same order among this browser's `remembered` job ids,
    or a new job and session (`create_checkout`); the job and the URL to send the buyer to.
    `locale` is the language of the buyer's page, the order's emails' language."""
    reusable = open_checkout_of(attachment, resolution, email, remembered, locale=locale)
    if reusable is not None:
        return reusable
    return create_checkout(attachment, resolution, email, user_agent=user_agent, locale=locale)


def open_checkout_of(
    attachment: Attachment,
    resolution: str,
    email: str,
    remembered: Sequence[str],
    *,
    locale: str = "en",
) -> tuple[Job, str] | None:
    """The job among `remembered` awaiting payment for this image, resolution, email, price and
    language, with its session URL, if Stripe says that session is still open; changes nothing."""
    offer = offer_for(attachment, resolution)
    if not remembered or not offer.available:
        return None
    candidates = db.session.scalars(
        select(Job)
        .where(
            Job.job_id.in_(list(remembered)),
            Job.status == "awaiting_payment",
            Job.attachment_id == attachment.id,
            Job.resolution == resolution,
            Job.email == email,
            Job.currency == settings.get("CURRENCY"),
            # A session opened before the admin turned codes or tax on or off is not reused.
            Job.promotion_codes_allowed.is_(bool(settings.get("PROMOTION_CODES"))),
            Job.automatic_tax.is_(bool(settings.get("STRIPE_AUTOMATIC_TAX"))),
            Job.locale == locale,
            Job.stripe_checkout_session_id.is_not(None),
            Job.checkout_expires_at > utcnow() + REUSE_MARGIN,
        )
        .order_by(Job.id.desc())
    ).all()
    for job in candidates:
        # The price shown now is the price charged: a session at an older price is not reused.
        if job.amount_charged != offer.quote.price or job.stripe_checkout_session_id is None:
            continue
        try:
            session = retrieve_session(job.stripe_checkout_session_id)
        except (stripe.StripeError, CheckoutUnavailable) as exc:
            log.warning("job=%s session check failed: %s", job.job_id, type(exc).__name__)
            return None
        if session.get("status") == "open" and session.get("url"):
            log.info("job=%s checkout session reused", job.job_id)
            return job, str(session["url"])
    return None


def create_checkout(
    attachment: Attachment,
    resolution: str,
    email: str,
    *,
    user_agent: str | None,
    locale: str = "en",
) -> tuple[Job, str]:
    """Create the job and its Checkout Session; return the job and the URL to send the buyer to.

    The caller has validated the form; the price is computed here, never taken from it.
    ValueError when the tier is not offered; CheckoutUnavailable (and the job closed) when Stripe
    cannot start the session.
    """
    config = settings.current()
    offer = offer_for(attachment, resolution)
    if not offer.available:
        raise ValueError(offer.unavailable_reason)
    job = _new_job(attachment, resolution, email, offer.quote, config)
    job.locale = locale
    funnel.record(
        funnel.CHECKOUT_STARTED,
        post_id=attachment.post_id,
        attachment_id=attachment.id,
        job_id=job.job_id,
        user_agent=user_agent,
    )
    record_event(job.job_id, "created", f"{resolution} for {offer.quote.price} {job.currency}")
    metrics.count_on_commit(metrics.CHECKOUTS_STARTED, resolution=resolution)
    transactions.commit()

    expires_at = utcnow() + dt.timedelta(minutes=int(config["CHECKOUT_EXPIRY_MINUTES"]))
    params = _session_params(job, attachment, offer.quote, expires_at)
    try:
        session = stripe_client().v1.checkout.sessions.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": f"checkout-{job.job_id}"},
        )
    except (stripe.StripeError, CheckoutUnavailable) as exc:
        _close_unstarted(job.job_id, type(exc).__name__)
        raise CheckoutUnavailable(str(exc)) from exc
    job.stripe_checkout_session_id = session.id
    job.checkout_expires_at = expires_at
    transactions.commit()
    log.info("job=%s checkout session=%s created", job.job_id, session.id)
    return job, str(session.url)


def _new_job(
    attachment: Attachment, resolution: str, email: str, quote: Quote, config: Mapping[str, Any]
) -> Job:
    job = Job(
        job_id=str(uuid.uuid4()),
        post_id=attachment.post_id,
        attachment_id=attachment.id,
        image_url=f"{current_app.config['PUBLIC_BASE_URL']}/images/{attachment.id}",
        image_width=attachment.width,
        image_height=attachment.height,
        resolution=resolution,
        email=email,
        status="awaiting_payment",
        payment_status="pending",
        # The price until Stripe says what it charged (a discount or tax changes it then).
        amount_charged=quote.price,
        amount_subtotal=quote.price,
        amount_cost=quote.cost.quantize(Decimal("0.01")),
        credits_used=quote.credits,
        currency=config["CURRENCY"],
        promotion_codes_allowed=bool(config["PROMOTION_CODES"]),
        automatic_tax=bool(config["STRIPE_AUTOMATIC_TAX"]),
    )
    db.session.add(job)
    return job


def _session_params(
    job: Job, attachment: Attachment, quote: Quote, expires_at: dt.datetime
) -> dict[str, Any]:
    """What Stripe is asked for: one line item at the server's price, the job's id everywhere;
    promotion codes and automatic tax (on top of the price) as the job was opened with."""
    base = current_app.config["PUBLIC_BASE_URL"]
    title = attachment.title or attachment.original_filename
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": job.currency,
                    "unit_amount": to_minor_units(quote.price, job.currency),
                    "product_data": {
                        "name": f"{title}: {job.resolution} upscale, "
                        f"{quote.output_width} × {quote.output_height} px",
                    },
                },
            }
        ],
        "client_reference_id": job.job_id,
        "metadata": {"job_id": job.job_id},
        "payment_intent_data": {"metadata": {"job_id": job.job_id}},
        "success_url": f"{base}/orders/{job.job_id}?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{base}/images/{attachment.id}?cancelled=1",
        "expires_at": int(expires_at.replace(tzinfo=dt.UTC).timestamp()),
    }
    if job.email:
        params["customer_email"] = job.email
    if job.promotion_codes_allowed:
        params["allow_promotion_codes"] = True
    if job.automatic_tax:
        params["automatic_tax"] = {"enabled": True}
        params["line_items"][0]["price_data"]["tax_behavior"] = "exclusive"
    params["locale"] = job.locale  # Stripe's page in the buyer's language too
    return params


def _close_unstarted(job_id: str, reason: str) -> None:
    """No payment can come for this job: close it now rather than leave it waiting."""
    transition(
        job_id,
        ["awaiting_payment"],
        status="abandoned",
        error_message=f"Checkout could not start: {reason}",
    )
    record_event(job_id, "checkout_failed", reason)
    transactions.commit()
    log.warning("job=%s checkout session failed: %s", job_id, reason)
