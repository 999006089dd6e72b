"""Database tables: the catalog, the jobs table and the records that hang off it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from storefront.extensions import db

# SQLite only auto-increments INTEGER PRIMARY KEY; elsewhere ids are BIGINT as in the seed.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Money = Numeric(10, 2, asdecimal=True)

JOB_STATUSES = ("awaiting_payment", "pending", "processing", "completed", "failed", "abandoned")
PAYMENT_STATUSES = ("pending", "paid", "failed", "refunded")
RESOLUTIONS = ("4x", "8x")


def utcnow() -> dt.datetime:
    """The current time in UTC, naive, as every DATETIME column stores it."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _in_list(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


class Post(db.Model):  # type: ignore[name-defined]
    """A page of the site, standing in for a WordPress post."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    title: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # The sitemap's lastmod; rows from before 0009 have none until they change (created_at then).
    updated_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow
    )

    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="post", order_by="Attachment.id"
    )


class Attachment(db.Model):  # type: ignore[name-defined]
    """An image of the catalog, standing in for a WordPress media attachment."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"), index=True)
    file_path: Mapped[str] = mapped_column(String(500))
    original_filename: Mapped[str] = mapped_column(String(255))
    mime_type: Mapped[str] = mapped_column(String(100))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    file_size: Mapped[int] = mapped_column(BigInteger)
    alt_text: Mapped[str] = mapped_column(String(500), default="")
    title: Mapped[str] = mapped_column(String(255), default="")
    for_sale: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow
    )
    # The owner's choice of the region samples show, as fractions of the width and height from
    # the top left; NULL: the most detailed region is found.
    focus_x: Mapped[float | None] = mapped_column(Float)
    focus_y: Mapped[float | None] = mapped_column(Float)

    post: Mapped[Post] = relationship(back_populates="attachments")

    @property
    def megapixels(self) -> float:
        """The image's size in millions of pixels."""
        return self.width * self.height / 1_000_000


class ImageSample(db.Model):  # type: ignore[name-defined]
    """A ready before/after sample of one region of an image at one resolution, by one engine.

    One row per image, resolution and engine; `fingerprint` names the original (and focus point)
    it was made from, so a changed image is made again. The files are `engine_key` (the engine's
    output) and `plain_key` (the plain enlargement).
    """

    __tablename__ = "image_samples"
    __table_args__ = (
        Index("ix_image_samples_identity", "attachment_id", "resolution", "engine", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    attachment_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("attachments.id"))
    resolution: Mapped[str] = mapped_column(String(10))
    engine: Mapped[str] = mapped_column(String(20))
    fingerprint: Mapped[str] = mapped_column(String(64))
    region_left: Mapped[int] = mapped_column(Integer)
    region_top: Mapped[int] = mapped_column(Integer)
    region_width: Mapped[int] = mapped_column(Integer)
    region_height: Mapped[int] = mapped_column(Integer)
    engine_key: Mapped[str] = mapped_column(String(500))
    plain_key: Mapped[str] = mapped_column(String(500))
    # The worker's seconds for the whole sample: region choice, both images, storage.
    seconds: Mapped[float] = mapped_column(Float)
    made_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Job(db.Model):  # type: ignore[name-defined]
    """One purchase of one upscaled image: the seed's `wp_smi_jobs` row, and a few more columns."""

    __tablename__ = "smi_jobs"
    __table_args__ = (
        Index("job_id", "job_id", unique=True),
        Index("post_id", "post_id"),
        Index("attachment_id", "attachment_id"),
        Index("post_attachment", "post_id", "attachment_id"),
        Index("status", "status"),
        Index("payment_status", "payment_status"),
        Index("download_token", "download_token"),
        Index("created_at", "created_at"),
        # Webhooks and the order page look jobs up by their Checkout Session.
        Index("stripe_checkout_session_id", "stripe_checkout_session_id"),
        # Refund and dispute webhooks find their job by its PaymentIntent.
        Index("stripe_payment_intent_id", "stripe_payment_intent_id"),
        # The buyer's "send me a fresh link" form looks orders up by email.
        Index("email", "email"),
        CheckConstraint(_in_list("status", JOB_STATUSES), name="status"),
        CheckConstraint(_in_list("payment_status", PAYMENT_STATUSES), name="payment_status"),
        CheckConstraint(_in_list("resolution", RESOLUTIONS), name="resolution"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(255), nullable=False)
    image_url: Mapped[str] = mapped_column(Text, nullable=False)
    resolution: Mapped[str] = mapped_column(String(10), nullable=False)
    email: Mapped[str] = mapped_column(String(255), nullable=False)
    post_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("posts.id"), nullable=False)
    attachment_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("attachments.id"))
    image_width: Mapped[int | None] = mapped_column(Integer)
    image_height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str | None] = mapped_column(
        String(20), default="awaiting_payment", server_default="awaiting_payment"
    )
    upsampler_job_id: Mapped[str | None] = mapped_column(String(255))
    upscaled_url: Mapped[str | None] = mapped_column(Text)
    upscaled_file_path: Mapped[str | None] = mapped_column(Text)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255))
    payment_status: Mapped[str | None] = mapped_column(
        String(20), default="pending", server_default="pending"
    )
    amount_charged: Mapped[Decimal | None] = mapped_column(Money)
    amount_cost: Mapped[Decimal | None] = mapped_column(Money)
    credits_used: Mapped[int | None] = mapped_column(Integer)
    download_token: Mapped[str | None] = mapped_column(String(64))
    download_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    email_sent: Mapped[bool | None] = mapped_column(Boolean, default=False, server_default="0")
    paid_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    processing_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    failed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    refunded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    refund_reason: Mapped[str | None] = mapped_column(Text)
    refund_amount: Mapped[Decimal | None] = mapped_column(Money)
    created_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime, default=utcnow, server_default=func.current_timestamp()
    )
    updated_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow, server_default=func.current_timestamp()
    )

    # Beyond the seed.
    currency: Mapped[str] = mapped_column(String(3), default="usd", server_default="usd")
    checkout_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error_message: Mapped[str | None] = mapped_column(Text)
    download_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Bytes of the file served under the link; download_count is this ÷ the file's size, rounded up.
    download_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    upscaled_file_size: Mapped[int | None] = mapped_column(BigInteger)
    disputed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # The job's one submission to Upsampler in this run: opened (and committed) before the call.
    upsampler_submission_key: Mapped[str | None] = mapped_column(String(64))
    upsampler_submitted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # What Stripe charged, beside amount_charged (what the buyer paid, set from Stripe's total once
    # paid): the price before discount and tax, the discount of a promotion code, the tax added.
    amount_subtotal: Mapped[Decimal | None] = mapped_column(Money)
    amount_discount: Mapped[Decimal | None] = mapped_column(Money)
    amount_tax: Mapped[Decimal | None] = mapped_column(Money)
    # What the job's Checkout Session was opened with: a discount or tax is accepted only if on.
    promotion_codes_allowed: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default="0"
    )
    automatic_tax: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # The language the buyer used at checkout: the order's emails are written in it.
    locale: Mapped[str] = mapped_column(String(8), default="en", server_default="en")

    post: Mapped[Post] = relationship()
    attachment: Mapped[Attachment | None] = relationship()

    @validates("status")
    def _check_status(self, _key: str, value: str) -> str:
        if value not in JOB_STATUSES:
            raise ValueError(f"unknown job status {value!r}")
        return value

    @validates("payment_status")
    def _check_payment_status(self, _key: str, value: str) -> str:
        if value not in PAYMENT_STATUSES:
            raise ValueError(f"unknown payment status {value!r}")
        return value

    @validates("resolution")
    def _check_resolution(self, _key: str, value: str) -> str:
        if value not in RESOLUTIONS:
            raise ValueError(f"unknown resolution {value!r}")
        return value

    @property
    def factor(self) -> int:
        """The upscale factor of the job's resolution."""
        return int(self.resolution.rstrip("x"))


class StripeEvent(db.Model):  # type: ignore[name-defined]
    """A Stripe event already handled; its unique id makes a redelivery harmless."""

    __tablename__ = "stripe_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    job_id: Mapped[str | None] = mapped_column(String(255), index=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class JobEvent(db.Model):  # type: ignore[name-defined]
    """One line of a job's timeline: a state change, an attempt, an email, an admin's action."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    message: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(255), default="system")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class FunnelEvent(db.Model):  # type: ignore[name-defined]
    """A step of the buyer's funnel: an image viewed, a checkout started, a payment."""

    __tablename__ = "funnel_events"
    __table_args__ = (
        Index("ix_funnel_events_kind_created_at", "kind", "created_at"),
        Index("ix_funnel_events_buffer_id", "buffer_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    post_id: Mapped[int | None] = mapped_column(BigInteger)
    attachment_id: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[str | None] = mapped_column(String(255))
    # An image view buffered in Redis keeps its id here, so that it is folded in once only.
    buffer_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class DownloadLog(db.Model):  # type: ignore[name-defined]
    """One request for a delivered file: when, from where, how many bytes, whether it counted."""

    __tablename__ = "download_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(255), index=True)
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(500), default="")
    range_header: Mapped[str] = mapped_column(String(100), default="")
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    counted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class EmailOutbox(db.Model):  # type: ignore[name-defined]
    """An email a job needs, written in the transaction of the change that needs it; handed to RQ
    after the commit, sent once by a worker, handed over again by the sweeper until it is."""

    __tablename__ = "email_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    job_id: Mapped[str] = mapped_column(String(255), index=True)
    # `<kind>-<job id>` for an email a job gets once; NULL for one it may get again (fresh links).
    once_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    handed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    handovers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the worker was done with it, and how: "sent", or why nothing was sent.
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, index=True)
    outcome: Mapped[str | None] = mapped_column(String(200))


class BuyerSignIn(db.Model):  # type: ignore[name-defined]
    """A "My orders" sign-in link asked for by email, and once used the buyer's session.

    Only the SHA-256 of the link's token is kept; the token itself is derived from the secret key
    and the row's outbox email (`storefront.buyers.sign_in`), so the email's task can write it.
    """

    __tablename__ = "buyer_sign_ins"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Lower-cased and stripped: matched against smi_jobs.email case-insensitively.
    email: Mapped[str] = mapped_column(String(255), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The outbox row of the email that carries the link.
    outbox_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    # Set once, by the one conditional UPDATE that signs the buyer in.
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    signed_out_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # The language the link was asked for in: its email is written in it.
    locale: Mapped[str] = mapped_column(String(8), default="en", server_default="en")


# The admin area: its accounts, sign-in throttling, settings and audit log.


class AdminUser(db.Model):  # type: ignore[name-defined]
    """A person who may sign in to /admin; only a hash of the password is kept."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class SignInThrottle(db.Model):  # type: ignore[name-defined]
    """Failed sign-ins counted per account and per address, to slow and then lock guessing."""

    __tablename__ = "admin_sign_in_throttle"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime)


class AppSetting(db.Model):  # type: ignore[name-defined]
    """A business setting edited in the admin area; it overrides the environment's value."""

    __tablename__ = "app_settings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(255), default="")


class AdminAction(db.Model):  # type: ignore[name-defined]
    """The audit log: who did what to which job, image or setting, and when."""

    __tablename__ = "admin_actions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    admin: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(255), default="", index=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    # The form's one-time id: a second press of the same button finds it and does nothing.
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


# What the admin pages filter, sort and add up the jobs table by, at 100,000 rows and more. The two
# wide ones cover their queries, so the database answers them from the index alone.
Index("ix_smi_jobs_paid_at", Job.paid_at)
Index("ix_smi_jobs_completed_at_download_count", Job.completed_at, Job.download_count)
Index("ix_smi_jobs_failed_at", Job.failed_at)
Index("ix_smi_jobs_download_expires_at", Job.download_expires_at)
# The job list: a status, a date range, a payment status, sorted by date or amount.
Index(
    "ix_smi_jobs_status_created_at_payment_amount",
    Job.status,
    Job.created_at,
    Job.payment_status,
    Job.amount_charged,
)
# The dashboard's money: the seed's revenue query, cost, and the best-selling posts and images.
Index(
    "ix_smi_jobs_payment_status_created_at_money",
    Job.payment_status,
    Job.created_at,
    Job.post_id,
    Job.attachment_id,
    Job.amount_charged,
    Job.refund_amount,
    Job.amount_cost,
)
