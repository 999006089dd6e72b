"""The emails a job sends: built from templates, HTML with a plain-text alternative."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from email.utils import formataddr, parseaddr
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, render_template
from flask_babel import force_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel.speaklater import LazyString
from flask_mail import Message

from storefront import i18n, settings, transactions
from storefront.extensions import mail
from storefront.formatting import local_time
from storefront.images import fitted_size
from storefront.jobs import metrics, outbox
from storefront.jobs.delivery import issue_download_token
from storefront.jobs.state import get_job, record_event, transition
from storefront.models import Job

log = logging.getLogger("smi.mail")
# The largest a mail shows the picture of what was bought, in CSS pixels (within the thumb's 480).
MAIL_PREVIEW_BOX = (480, 320)


@dataclass(frozen=True)
class EmailKind:
    """One kind of email: its subject and the template pair that renders it (a buyer's email is
    translated into the order's language; the admin's stay in English)."""

    subject: str | LazyString
    template: str
    to_admin: bool = False


KINDS = {
    "paid": EmailKind(_l("Payment received: we're upscaling your image"), "paid"),
    "ready": EmailKind(_l("Your high-resolution image is ready"), "ready"),
    "link": EmailKind(_l("A fresh download link for your image"), "ready"),
    "failed": EmailKind(_l("We couldn't process your image: you have been refunded"), "failed"),
    "failed_free": EmailKind(_l("We couldn't process your image"), "failed"),
    "refunded": EmailKind(_l("We've refunded your order"), "refunded"),
    "admin_alert": EmailKind("[Sell My Images] A paid job failed", "admin_alert", to_admin=True),
    "cost_alert": EmailKind(
        "[Sell My Images] A job cost more than the buyer paid", "admin_alert", to_admin=True
    ),
}


def sender() -> str:
    """`Name <address>`: the address of MAIL_DEFAULT_SENDER, the name the admin may change."""
    address = parseaddr(str(current_app.config["MAIL_DEFAULT_SENDER"]))[1] or "shop@localhost"
    return formataddr((str(settings.get("MAIL_SENDER_NAME")), address))


def build_message(kind: str, job: Job, **context: Any) -> Message:
    """The email of `kind` about `job`, addressed to the buyer in the language of the order (or
    to the admin, in English, for alerts)."""
    spec = KINDS[kind]
    config = current_app.config
    recipient = config.get("ADMIN_EMAIL") if spec.to_admin else job.email
    if not recipient:
        raise ValueError(f"no recipient for the {kind} email of job {job.job_id}")
    language = i18n.DEFAULT_LANGUAGE if spec.to_admin else i18n.order_language(job.locale)
    with force_locale(language):
        return _message(spec, kind, job, recipient, context)


def _message(
    spec: EmailKind, kind: str, job: Job, recipient: str, context: dict[str, Any]
) -> Message:
    """The message itself, in the locale in force."""
    config = current_app.config
    base = config["PUBLIC_BASE_URL"]
    values = {
        "job": job,
        "kind": kind,
        "base": base,
        "order_url": f"{base}/orders/{job.job_id}",
        "output_width": (job.image_width or 0) * job.factor,
        "output_height": (job.image_height or 0) * job.factor,
        "expires": local_time(job.download_expires_at, current_app.config["DISPLAY_TIMEZONE"]),
        "title": (job.attachment.title if job.attachment else "") or _("your image"),
        "preview": _preview(job, base),
        **context,
    }
    return Message(
        subject=str(spec.subject),
        sender=sender(),
        recipients=[recipient],
        body=render_template(f"email/{spec.template}.txt", **values),
        html=render_template(f"email/{spec.template}.html", **values),
    )


@dataclass(frozen=True)
class MailPreview:
    """The picture a mail shows of what was bought: the shop's preview, and its size in the mail."""

    url: str
    width: int
    height: int
    alt: str


def _preview(job: Job, base: str) -> MailPreview | None:
    """The bought image's preview as the shop serves it (thumb), fitted to MAIL_PREVIEW_BOX."""
    image = job.attachment
    if image is None:
        return None
    width, height = fitted_size(image.width, image.height, *MAIL_PREVIEW_BOX)
    url = f"{base}/images/{image.id}/preview/thumb.jpg"
    alt = image.alt_text or image.title or _("The image you bought")
    return MailPreview(url, width, height, alt)


def send(message: Message) -> None:
    """Hand the message to the SMTP server; raises if it does not accept it."""
    mail.send(message)


def deliver(kind: str, job_id: str, outbox_id: str = "") -> str:
    """Send one of a job's emails; SMTP errors propagate so RQ retries this email alone.

    `outbox_id` names the email's outbox row: a row already done is not sent again, and the row
    is marked done, once, in the commit that records the outcome.
    """
    row = int(outbox_id) if outbox_id else None
    if row is not None and not outbox.is_pending(row):
        return "already sent"
    job = get_job(job_id)
    if job is None:
        return _done(row, "unknown job")
    context: dict[str, Any] = {}
    if kind in ("ready", "link"):
        if kind == "ready" and job.email_sent:
            return _done(row, "already sent")
        if kind == "link" and row is not None and outbox.superseded(row):
            return _done(row, "superseded by a later fresh link")
        # The token exists in clear only here and in the message; the database keeps its digest.
        # It replaces the job's current token now, not before: a fresh link's old one works until
        # this email goes out.
        token = issue_download_token(job_id, _row_token(row) if row is not None else None)
        if token is None:
            transactions.rollback()
            return _done(row, f"not deliverable ({job.status}/{job.payment_status})")
        transactions.commit()
        context["download_url"] = f"{current_app.config['PUBLIC_BASE_URL']}/download/{token}"
        job = get_job(job_id)
        assert job is not None
    spec = KINDS[kind]
    if not spec.to_admin and not job.email:
        record_event(job_id, f"email_{kind}_skipped", "no email address for this order")
        metrics.count(metrics.EMAILS, kind=kind, outcome="skipped")
        return _done(row, "no address")
    if spec.to_admin and not current_app.config.get("ADMIN_EMAIL"):
        metrics.count(metrics.EMAILS, kind=kind, outcome="skipped")
        return _done(row, "no admin address")
    message = build_message(kind, job, **context)
    if row is not None:
        # The same outbox row sent again (the worker died after SMTP took it, before the commit)
        # is the same message: one Message-ID for mail clients, and a link that still works.
        message.msgId = _row_message_id(row)
    try:
        send(message)
    except Exception:
        metrics.count(metrics.EMAILS, kind=kind, outcome="failed")
        raise
    metrics.count(metrics.EMAILS, kind=kind, outcome="sent")
    if kind in ("ready", "link"):
        transition(job_id, ["completed"], email_sent=True)
    recipient = "admin" if spec.to_admin else "buyer"
    record_event(job_id, f"email_{kind}", f"sent to the {recipient}")
    outcome = _done(row, "sent")
    log.info("job=%s email=%s sent", job_id, kind)
    return outcome


def _row_token(outbox_id: int) -> str:
    """The download token an outbox row's email carries: secret, and the same at every try."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, f"smi-download-token:{outbox_id}".encode(), hashlib.sha256).hexdigest()


def _row_message_id(outbox_id: int) -> str:
    """The Message-ID of an outbox row's email, the same at every try."""
    host = urlsplit(str(current_app.config["PUBLIC_BASE_URL"])).hostname or "localhost"
    return f"<smi-outbox-{outbox_id}@{host}>"


def _done(outbox_id: int | None, outcome: str) -> str:
    """Commit what the email changed, its outbox row marked done with `outcome`; return it."""
    if outbox_id is not None:
        outbox.finish(outbox_id, outcome)
    transactions.commit()
    return outcome
