"""The jobs table matches the seed's: columns, types, nullability, indexes, constraints."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy.exc import IntegrityError

from storefront.extensions import db
from storefront.models import Job
from tests.factories import make_attachment, make_job

# (column, type family, length/precision, nullable) as in the seed's CREATE TABLE.
SEED_COLUMNS = [
    ("id", "int", None, False),
    ("job_id", "varchar", 255, False),
    ("image_url", "text", None, False),
    ("resolution", "varchar", 10, False),
    ("email", "varchar", 255, False),
    ("post_id", "int", None, False),
    ("attachment_id", "int", None, True),
    ("image_width", "int", None, True),
    ("image_height", "int", None, True),
    ("status", "varchar", 20, True),
    ("upsampler_job_id", "varchar", 255, True),
    ("upscaled_url", "text", None, True),
    ("upscaled_file_path", "text", None, True),
    ("stripe_payment_intent_id", "varchar", 255, True),
    ("stripe_checkout_session_id", "varchar", 255, True),
    ("payment_status", "varchar", 20, True),
    ("amount_charged", "decimal", (10, 2), True),
    ("amount_cost", "decimal", (10, 2), True),
    ("credits_used", "int", None, True),
    ("download_token", "varchar", 64, True),
    ("download_expires_at", "datetime", None, True),
    ("email_sent", "bool", None, True),
    ("paid_at", "datetime", None, True),
    ("processing_started_at", "datetime", None, True),
    ("completed_at", "datetime", None, True),
    ("failed_at", "datetime", None, True),
    ("refunded_at", "datetime", None, True),
    ("refund_reason", "text", None, True),
    ("refund_amount", "decimal", (10, 2), True),
    ("created_at", "datetime", None, True),
    ("updated_at", "datetime", None, True),
]

SEED_INDEXES = {
    "job_id": (["job_id"], True),
    "post_id": (["post_id"], False),
    "attachment_id": (["attachment_id"], False),
    "post_attachment": (["post_id", "attachment_id"], False),
    "status": (["status"], False),
    "payment_status": (["payment_status"], False),
    "download_token": (["download_token"], False),
    "created_at": (["created_at"], False),
}


def _family(column_type: sa.types.TypeEngine) -> str:
    if isinstance(column_type, sa.Boolean):
        return "bool"
    if isinstance(column_type, sa.Numeric) and not isinstance(column_type, sa.Float):
        return "decimal"
    if isinstance(column_type, sa.Integer):
        return "int"
    if isinstance(column_type, sa.DateTime):
        return "datetime"
    if isinstance(column_type, sa.Text) or (
        isinstance(column_type, sa.String) and column_type.length is None
    ):
        return "text"
    if isinstance(column_type, sa.String):
        return "varchar"
    # SQLite reflects BOOLEAN as a Boolean, PostgreSQL as BOOLEAN; anything else is a surprise.
    return type(column_type).__name__.lower()


@pytest.fixture
def columns(app: Flask) -> dict[str, dict]:
    inspector = sa.inspect(db.engine)
    return {column["name"]: column for column in inspector.get_columns("smi_jobs")}


@pytest.mark.parametrize(("name", "family", "size", "nullable"), SEED_COLUMNS)
def test_seed_column_has_type_and_nullability(
    columns: dict[str, dict], name: str, family: str, size: object, nullable: bool
) -> None:
    column = columns[name]
    assert _family(column["type"]) == family
    if family == "varchar":
        assert column["type"].length == size
    if family == "decimal":
        assert (column["type"].precision, column["type"].scale) == size
    assert column["nullable"] is nullable


@pytest.mark.parametrize(("name", "expected"), SEED_INDEXES.items())
def test_seed_index_exists_with_its_columns(app: Flask, name: str, expected: tuple) -> None:
    indexes = {ix["name"]: ix for ix in sa.inspect(db.engine).get_indexes("smi_jobs")}
    assert name in indexes
    assert (indexes[name]["column_names"], bool(indexes[name]["unique"])) == expected


def test_jobs_reference_posts_and_attachments(app: Flask) -> None:
    foreign = {
        tuple(fk["constrained_columns"]): fk["referred_table"]
        for fk in sa.inspect(db.engine).get_foreign_keys("smi_jobs")
    }
    assert foreign == {("post_id",): "posts", ("attachment_id",): "attachments"}


def _insert_raw(**overrides: object) -> None:
    from flask import current_app

    attachment = make_attachment(current_app._get_current_object())  # type: ignore[attr-defined]
    values = {
        "job_id": str(uuid.uuid4()),
        "image_url": "/x",
        "resolution": "4x",
        "email": "a@example.com",
        "post_id": attachment.post_id,
        "attachment_id": attachment.id,
        "status": "awaiting_payment",
        "payment_status": "pending",
        "currency": "usd",
    }
    values.update(overrides)
    db.session.execute(sa.insert(Job.__table__).values(**values))
    db.session.flush()


def test_duplicate_job_id_is_refused_by_the_database(app: Flask) -> None:
    _insert_raw(job_id="same")
    with pytest.raises(IntegrityError):
        _insert_raw(job_id="same")
    db.session.rollback()


@pytest.mark.parametrize("column", ["status", "payment_status"])
def test_unknown_state_is_refused_by_the_database(app: Flask, column: str) -> None:
    with pytest.raises(IntegrityError):
        _insert_raw(**{column: "bogus"})
    db.session.rollback()


def test_null_email_is_refused_by_the_database(app: Flask) -> None:
    with pytest.raises(IntegrityError):
        _insert_raw(email=None)
    db.session.rollback()


def test_unknown_state_is_refused_in_python(app: Flask) -> None:
    job = Job(job_id="x", resolution="4x")
    with pytest.raises(ValueError, match="unknown job status"):
        job.status = "shipped"
    with pytest.raises(ValueError, match="unknown payment status"):
        job.payment_status = "maybe"


def test_created_at_set_on_insert_and_updated_at_moves_on_update(app: Flask) -> None:
    job = make_job(make_attachment(app))
    db.session.commit()
    assert job.created_at is not None
    first = job.updated_at
    assert first is not None
    time.sleep(0.01)
    job.email = "changed@example.com"
    db.session.commit()
    assert job.updated_at is not None and job.updated_at > first
    assert job.created_at <= first


def test_models_and_migrations_do_not_drift(app: Flask) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    assert differences == []
