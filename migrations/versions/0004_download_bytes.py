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
    with op.batch_alter_table('smi_jobs', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('download_bytes', sa.BigInteger(), server_default='0', nullable=False)
        )
    # A link counted the old way keeps what it used: a whole file for each download counted.
    op.execute(
        "UPDATE smi_jobs SET download_bytes = download_count * upscaled_file_size "
        "WHERE download_count > 0 AND upscaled_file_size IS NOT NULL"
    )


def downgrade():
    with op.batch_alter_table('smi_jobs', schema=None) as batch_op:
        batch_op.drop_column('download_bytes')
