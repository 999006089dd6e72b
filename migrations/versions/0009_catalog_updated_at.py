"""posts and attachments say when they last changed (the sitemap's lastmod)

Revision ID: 0009_catalog_updated_at
Revises: 0008_funnel_buffer_id
Create Date: 2026-12-02 04:00:00

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0009_catalog_updated_at"
down_revision = "0008_funnel_buffer_id"
branch_labels = None
depends_on = None

TABLES = ("posts", "attachments")


def upgrade():
    # Nullable, and filled from created_at: a NOT NULL column would make SQLite rebuild tables
    # that the jobs table references.
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("updated_at", sa.DateTime(), nullable=True))
        op.execute(f"UPDATE {table} SET updated_at = created_at")


def downgrade():
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("updated_at")
