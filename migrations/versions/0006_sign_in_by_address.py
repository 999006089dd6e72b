"""sign-in throttling per account and per address, counted atomically

Revision ID: 0006_sign_in_by_address
Revises: 0005_email_outbox
Create Date: 2026-12-01 22:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006_sign_in_by_address'
down_revision = '0005_email_outbox'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
