"""idempotent Upsampler submissions

Revision ID: 0007_upsampler_submission
Revises: 0006_sign_in_by_address
Create Date: 2026-12-01 22:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007_upsampler_submission'
down_revision = '0006_sign_in_by_address'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
