"""image views buffered in Redis: each folded into funnel_events once

Revision ID: 0008_funnel_buffer_id
Revises: 0007_upsampler_submission
Create Date: 2026-12-02 02:00:00

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0008_funnel_buffer_id"
down_revision = "0007_upsampler_submission"
branch_labels = None
depends_on = None


def upgrade():
    # A page view is buffered in Redis with an id and folded in by the sweeper; the unique id
    # makes a fold that stopped halfway and runs again insert nothing twice.
    with op.batch_alter_table("funnel_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("buffer_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_funnel_events_buffer_id", ["buffer_id"], unique=True)


def downgrade():
    with op.batch_alter_table("funnel_events", schema=None) as batch_op:
        batch_op.drop_index("ix_funnel_events_buffer_id")
        batch_op.drop_column("buffer_id")
