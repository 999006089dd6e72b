"""bytes served per download link (counting downloads by bytes)

Revision ID: 0004_download_bytes
Revises: c5b3dfd193c0
Create Date: 2026-12-01 22:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004_download_bytes'
down_revision = 'c5b3dfd193c0'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
