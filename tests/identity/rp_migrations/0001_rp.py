"""A relying-party test service: the kit tables and the web session table.

Revision ID: rp_0001
Revises:
"""

from kizuna.kit.migrations import create_kit_tables
from kizuna.kit.oidc_client import create_web_session_table

revision = "rp_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_kit_tables()
    create_web_session_table()


def downgrade() -> None:
    pass
