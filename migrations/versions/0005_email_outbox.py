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
    op.create_table('email_outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('job_id', sa.String(length=255), nullable=False),
    sa.Column('once_key', sa.String(length=300), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('handed_at', sa.DateTime(), nullable=True),
    sa.Column('handovers', sa.Integer(), server_default='0', nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('outcome', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_outbox')),
    sa.UniqueConstraint('once_key', name=op.f('uq_email_outbox_once_key'))
    )
    with op.batch_alter_table('email_outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_email_outbox_finished_at'), ['finished_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_email_outbox_job_id'), ['job_id'], unique=False)


def downgrade():
    with op.batch_alter_table('email_outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_email_outbox_job_id'))
        batch_op.drop_index(batch_op.f('ix_email_outbox_finished_at'))

    op.drop_table('email_outbox')
