"""fintech: first revision (the kit's outbox and inbox).

Revision ID: fintech_0001
Revises:
"""

from kizuna.kit.migrations import create_kit_tables, drop_kit_tables

revision = "fintech_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_kit_tables()


def downgrade() -> None:
    drop_kit_tables()
