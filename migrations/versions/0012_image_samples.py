"""before/after samples of each image and resolution; the owner's focus point

Revision ID: 0012_image_samples
Revises: 0011_my_orders
Create Date: 2026-12-02 04:00:00

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0012_image_samples"
down_revision = "0011_my_orders"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("focus_x", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("focus_y", sa.Float(), nullable=True))
    op.create_table(
        "image_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("attachment_id", sa.BigInteger(), nullable=False),
        sa.Column("resolution", sa.String(length=10), nullable=False),
        sa.Column("engine", sa.String(length=20), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("region_left", sa.Integer(), nullable=False),
        sa.Column("region_top", sa.Integer(), nullable=False),
        sa.Column("region_width", sa.Integer(), nullable=False),
        sa.Column("region_height", sa.Integer(), nullable=False),
        sa.Column("engine_key", sa.String(length=500), nullable=False),
        sa.Column("plain_key", sa.String(length=500), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("made_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["attachment_id"],
            ["attachments.id"],
            name=op.f("fk_image_samples_attachment_id_attachments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_samples")),
    )
    # One sample per image, resolution and engine: a remade one replaces its row.
    op.create_index(
        "ix_image_samples_identity",
        "image_samples",
        ["attachment_id", "resolution", "engine"],
        unique=True,
    )


def downgrade():
    op.drop_index("ix_image_samples_identity", table_name="image_samples")
    op.drop_table("image_samples")
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.drop_column("focus_y")
        batch_op.drop_column("focus_x")
