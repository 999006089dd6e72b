"""an outbox of emails, written in the transaction that needs them

Revision ID: 0005_email_outbox
Revises: 0004_download_bytes
Create Date: 2026-12-01 22:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005_email_outbox'
down_revision = '0004_download_bytes'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
