"""idempotent Upsampler submissions

Revision ID: 0007_upsampler_submission
Revises: 0005_email_outbox
Create Date: 2026-12-01 22:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007_upsampler_submission'
down_revision = '0005_email_outbox'
branch_labels = None
depends_on = None


def upgrade():
    # A job's submission to Upsampler is opened (key and time committed) before the API call, so
    # a retry after a crash knows it may already have been sent and never sends it twice.
    with op.batch_alter_table('smi_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('upsampler_submission_key', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('upsampler_submitted_at', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('smi_jobs', schema=None) as batch_op:
        batch_op.drop_column('upsampler_submitted_at')
        batch_op.drop_column('upsampler_submission_key')
