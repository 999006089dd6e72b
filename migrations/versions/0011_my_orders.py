"""my orders: sign-in links a buyer asks for by email (only their SHA-256 is kept)

Revision ID: 0011_my_orders
Revises: 0010_discounts_and_tax
Create Date: 2026-12-02 04:00:00

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0011_my_orders"
down_revision = "0010_discounts_and_tax"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "buyer_sign_ins",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.Column("signed_out_at", sa.DateTime(), nullable=True),
        sa.Column("locale", sa.String(length=8), server_default="en", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_buyer_sign_ins")),
        sa.UniqueConstraint("outbox_id", name=op.f("uq_buyer_sign_ins_outbox_id")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_buyer_sign_ins_token_hash")),
    )
    with op.batch_alter_table("buyer_sign_ins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_buyer_sign_ins_email"), ["email"], unique=False)


def downgrade():
    with op.batch_alter_table("buyer_sign_ins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_buyer_sign_ins_email"))

    op.drop_table("buyer_sign_ins")
