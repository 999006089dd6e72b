"""the buyer's language on each job, for the order's emails

Revision ID: 0013_job_locale
Revises: 0012_image_samples
Create Date: 2026-12-02 04:00:00

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0013_job_locale"
down_revision = "0012_image_samples"
branch_labels = None
depends_on = None


def upgrade():
    # The language of the page the buyer checked out from; the order's emails are written in it.
    # Orders placed before this column existed were all in English.
    with op.batch_alter_table("smi_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("locale", sa.String(length=8), server_default="en", nullable=False)
        )


def downgrade():
    with op.batch_alter_table("smi_jobs", schema=None) as batch_op:
        batch_op.drop_column("locale")
