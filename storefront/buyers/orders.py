"""A buyer's orders, found by the email they were placed with, and fresh links for them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Select, select
from sqlalchemy.orm import selectinload

from storefront.extensions import db
from storefront.jobs.delivery import file_kept, is_delivered_and_paid, send_fresh_link
from storefront.models import Attachment, Job

# Checkouts never paid (awaiting payment, abandoned) are not orders: nothing was charged.
UNPAID_STATUSES = ("awaiting_payment", "abandoned")
# The most orders the page lists, newest first.
MAX_ORDERS = 500


def normalise_email(email: str) -> str:
    """An email address as orders are matched by it: stripped and lower-cased."""
    return email.strip().lower()


def _orders_where(email: str) -> Select[Job]:
    email = normalise_email(email)
    return select(Job).where(
        db.func.lower(Job.email) == email,
        Job.email != "",
        Job.status.not_in(UNPAID_STATUSES),
    )


def has_orders(email: str) -> bool:
    """Whether any paid order was placed with this email address (any case)."""
    if not normalise_email(email):
        return False
    return db.session.scalar(_orders_where(email).with_only_columns(Job.id).limit(1)) is not None


@dataclass(frozen=True)
class Order:
    """One line of the buyer's list: the job and what the buyer is told about it."""

    job: Job
    # queued, upscaling, ready, delivered (file no longer kept), failed, refunded, disputed
    state: str
    # A completed, paid order whose file is still kept may get a fresh download link.
    fresh_link: bool


def order_state(job: Job) -> tuple[str, bool]:
    """The buyer's word for where an order stands, and whether it may get a fresh link."""
    if job.disputed_at is not None:
        return "disputed", False
    if job.status == "failed":
        return "failed", False
    if job.payment_status == "refunded":
        return "refunded", False
    if job.status == "completed" and is_delivered_and_paid(job):
        if file_kept(job):
            return "ready", True
        return "delivered", False
    if job.status == "processing":
        return "upscaling", False
    return "queued", False


def orders_of(email: str) -> list[Order]:
    """Every paid order placed with this email address, newest first."""
    if not normalise_email(email):
        return []
    jobs = db.session.scalars(
        _orders_where(email)
        .options(selectinload(Job.attachment).selectinload(Attachment.post))
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(MAX_ORDERS)
    ).all()
    return [Order(job, *order_state(job)) for job in jobs]


def order_of(email: str, job_id: str) -> Job | None:
    """The order `job_id` if it was placed with this email address; None for anyone else's."""
    if not normalise_email(email):
        return None
    return db.session.scalar(_orders_where(email).where(Job.job_id == job_id.strip()))


class FreshLink(Enum):
    """What came of a signed-in buyer's request for a fresh download link."""

    SENT = "sent"
    NOT_YOURS = "not_yours"
    UNAVAILABLE = "unavailable"


def email_fresh_link(email: str, job_id: str) -> FreshLink:
    """Renew an order's link and mail it to the order's address, exactly as the fresh-link form
    does (`delivery.send_fresh_link`); only for an order placed with `email`."""
    job = order_of(email, job_id)
    if job is None:
        return FreshLink.NOT_YOURS
    if not send_fresh_link(job.email, job.job_id):
        return FreshLink.UNAVAILABLE
    return FreshLink.SENT
