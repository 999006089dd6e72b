"""Sign-in links for "My orders": asked for by email, usable once within an hour, then a session of
seven days that signing out ends.

A link's token is never stored: the database keeps its SHA-256 (as for download links). The email
goes through the outbox like every other, so Redis being down delays it but never loses it; the
task writing it derives the same token again from the secret key and the outbox row
(`sign_in_token`), which a retry therefore repeats rather than replaces.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from enum import Enum

from flask import current_app, render_template
from flask_babel import force_locale
from flask_babel import gettext as _
from flask_mail import Message
from sqlalchemy import select, update

from storefront import i18n, transactions
from storefront.buyers.orders import has_orders, normalise_email
from storefront.extensions import db
from storefront.jobs import metrics, outbox
from storefront.jobs.delivery import TOKEN_PATTERN, token_digest
from storefront.jobs.emails import send, sender
from storefront.jobs.queueing import hand_over
from storefront.models import BuyerSignIn, utcnow

log = logging.getLogger("smi.my_orders")

LINK_LIFETIME = dt.timedelta(hours=1)
SESSION_LIFETIME = dt.timedelta(days=7)
EMAIL_KIND = "sign_in"
# The outbox row's job id: a sign-in email is about no job.
OUTBOX_SUBJECT = "my-orders"


def sign_in_token(outbox_id: int, email: str, expires_at: dt.datetime) -> str:
    """The token of the link an outbox row's email carries: secret, the same at every try, and
    bound to its address and expiry (a database restored under the same key matches no old mail)."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    message = f"smi-my-orders-sign-in:{outbox_id}:{email}:{expires_at:%Y%m%dT%H%M%S}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def request_sign_in(email: str, locale: str = i18n.DEFAULT_LANGUAGE) -> None:
    """Write a sign-in link and its email for `email`; commits, then hands the email to RQ.

    The same work for every address: whether it has orders is the email task's question
    (`deliver_sign_in_email`), so neither the answer nor its timing tells anyone. An address
    without orders gets no email, and its link, never sent, signs no one in. The email is
    written in `locale`, the language of the page it was asked from.
    """
    email = normalise_email(email)
    outbox_id = outbox.add(EMAIL_KIND, OUTBOX_SUBJECT, once=False)
    assert outbox_id is not None  # not once-only: the insert always writes
    expires_at = (utcnow() + LINK_LIFETIME).replace(microsecond=0)
    token = sign_in_token(outbox_id, email, expires_at)
    db.session.add(
        BuyerSignIn(
            email=email,
            token_hash=token_digest(token),
            outbox_id=outbox_id,
            expires_at=expires_at,
            locale=i18n.order_language(locale),
        )
    )
    transactions.commit(lambda: hand_over(outbox_id))
    log.info("my-orders sign-in link written, outbox=%s", outbox_id)


class LinkState(Enum):
    """What a sign-in link leads to."""

    VALID = "valid"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    USED = "used"


def _find(token: str) -> BuyerSignIn | None:
    # An unknown token costs the same lookup as a near miss.
    digest = token_digest(token if TOKEN_PATTERN.fullmatch(token) else "x" * 64)
    row = db.session.scalar(
        select(BuyerSignIn)
        .where(BuyerSignIn.token_hash == digest)
        .execution_options(populate_existing=True)
    )
    return row if TOKEN_PATTERN.fullmatch(token) else None


def link_state(token: str) -> LinkState:
    """The state of the sign-in link with this token; changes nothing."""
    row = _find(token)
    if row is None:
        return LinkState.UNKNOWN
    if row.used_at is not None:
        return LinkState.USED
    if row.expires_at <= utcnow():
        return LinkState.EXPIRED
    return LinkState.VALID


def use_link(token: str) -> int | None:
    """Sign in with a link: the id of the session it opens, or None if it is unknown, expired or
    used. One conditional UPDATE, so two clicks at once sign in once; commits."""
    if not TOKEN_PATTERN.fullmatch(token):
        return None
    now = utcnow()
    session_id = db.session.execute(
        update(BuyerSignIn)
        .where(
            BuyerSignIn.token_hash == token_digest(token),
            BuyerSignIn.used_at.is_(None),
            BuyerSignIn.expires_at > now,
        )
        .values(used_at=now)
        .returning(BuyerSignIn.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    transactions.commit()
    if session_id is not None:
        log.info("my-orders sign-in, session=%s", session_id)
    return session_id


def signed_in_email(session_id: int) -> str | None:
    """The email address of a session opened within the last seven days and not signed out."""
    row = db.session.get(BuyerSignIn, session_id, populate_existing=True)
    if row is None or row.used_at is None or row.signed_out_at is not None:
        return None
    if row.used_at + SESSION_LIFETIME <= utcnow():
        return None
    return row.email


def sign_out(session_id: int) -> None:
    """End a session: its cookie, kept or copied, signs no one in any more; commits."""
    db.session.execute(
        update(BuyerSignIn)
        .where(BuyerSignIn.id == session_id, BuyerSignIn.signed_out_at.is_(None))
        .values(signed_out_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    transactions.commit()


def deliver_sign_in_email(outbox_id: int) -> str:
    """Send the sign-in email of an outbox row (an RQ task); nothing if it was dealt with, if its
    link expired or was used meanwhile, or if no paid order was placed with its address. SMTP
    errors propagate, so RQ retries."""
    if not outbox.is_pending(outbox_id):
        return "already sent"
    row = db.session.scalar(select(BuyerSignIn).where(BuyerSignIn.outbox_id == outbox_id))
    if row is None:
        return _done(outbox_id, "unknown sign-in link")
    if row.used_at is not None or row.expires_at <= utcnow():
        return _done(outbox_id, "the link expired before it was sent")
    if not has_orders(row.email):
        # The shop writes to no one it does not know: the form cannot send mail to strangers.
        return _done(outbox_id, "no orders for this address")
    token = sign_in_token(outbox_id, row.email, row.expires_at)
    if token_digest(token) != row.token_hash:
        return _done(outbox_id, "the secret key changed: the link can't be written")
    base = current_app.config["PUBLIC_BASE_URL"]
    values = {"sign_in_url": f"{base}/my-orders/{token}", "base": base, "minutes": 60}
    with force_locale(i18n.order_language(row.locale)):
        message = Message(
            subject=_("Your sign-in link for My orders"),
            sender=sender(),
            recipients=[row.email],
            body=render_template("email/sign_in.txt", **values),
            html=render_template("email/sign_in.html", **values),
        )
    try:
        send(message)
    except Exception:
        metrics.count(metrics.EMAILS, kind=EMAIL_KIND, outcome="failed")
        raise
    metrics.count(metrics.EMAILS, kind=EMAIL_KIND, outcome="sent")
    log.info("my-orders sign-in email sent, outbox=%s", outbox_id)
    return _done(outbox_id, "sent")


def _done(outbox_id: int, outcome: str) -> str:
    outbox.finish(outbox_id, outcome)
    transactions.commit()
    return outcome
