"""discounts and tax through Stripe Checkout: what Stripe charged, beside amount_charged

Revision ID: 0010_discounts_and_tax
Revises: 0009_catalog_updated_at
Create Date: 2026-12-02 04:00:00

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0010_discounts_and_tax"
down_revision = "0009_catalog_updated_at"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("smi_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("amount_subtotal", sa.Numeric(precision=10, scale=2), nullable=True))
        batch_op.add_column(sa.Column("amount_discount", sa.Numeric(precision=10, scale=2), nullable=True))
        batch_op.add_column(sa.Column("amount_tax", sa.Numeric(precision=10, scale=2), nullable=True))
        batch_op.add_column(
            sa.Column("promotion_codes_allowed", sa.Boolean(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("automatic_tax", sa.Boolean(), server_default="0", nullable=False)
        )
    # Every order so far was at its price, with neither discount nor tax.
    op.execute(
        "UPDATE smi_jobs SET amount_subtotal = amount_charged WHERE amount_charged IS NOT NULL"
    )
    op.execute(
        "UPDATE smi_jobs SET amount_discount = 0, amount_tax = 0 "
        "WHERE payment_status IN ('paid', 'refunded')"
    )


def downgrade():
    with op.batch_alter_table("smi_jobs", schema=None) as batch_op:
        batch_op.drop_column("automatic_tax")
        batch_op.drop_column("promotion_codes_allowed")
        batch_op.drop_column("amount_tax")
        batch_op.drop_column("amount_discount")
        batch_op.drop_column("amount_subtotal")
