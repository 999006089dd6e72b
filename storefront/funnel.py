"""The buyer's funnel: image viewed, checkout started, paid. Bots are not counted."""

from __future__ import annotations

import re

from storefront import transactions
from storefront.extensions import db
from storefront.models import Attachment, FunnelEvent

IMAGE_VIEWED = "image_viewed"
CHECKOUT_STARTED = "checkout_started"
PAID = "paid"

BOT_PATTERN = re.compile(
    r"bot|crawl|spider|slurp|bingpreview|facebookexternalhit|headless|curl|wget|python-requests"
    r"|httpclient|monitor|preview|scanner|lighthouse",
    re.IGNORECASE,
)


def is_bot(user_agent: str | None) -> bool:
    """Whether a user agent looks like a robot (or is missing, as robots' often are)."""
    return not user_agent or bool(BOT_PATTERN.search(user_agent))


def record(
    kind: str,
    *,
    post_id: int | None,
    attachment_id: int | None,
    job_id: str | None = None,
    user_agent: str | None = "",
) -> None:
    """Add a funnel event to the session, unless a robot caused it (the caller commits)."""
    if user_agent is not None and is_bot(user_agent):
        return
    db.session.add(
        FunnelEvent(kind=kind, post_id=post_id, attachment_id=attachment_id, job_id=job_id)
    )


def record_image_view(attachment: Attachment, user_agent: str) -> None:
    """A person opened an image's page: count it (a robot's visit is not), in its own commit."""
    if is_bot(user_agent):
        return
    record(IMAGE_VIEWED, post_id=attachment.post_id, attachment_id=attachment.id, user_agent=None)
    transactions.commit()
