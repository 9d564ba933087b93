"""fintech: the kit's web session table (member sign-in for the pages).

Revision ID: fintech_0003
Revises: fintech_0002
"""

from kizuna.kit.oidc_client import create_web_session_table, drop_web_session_table

revision = "fintech_0003"
down_revision = "fintech_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_web_session_table()


def downgrade() -> None:
    drop_web_session_table()
