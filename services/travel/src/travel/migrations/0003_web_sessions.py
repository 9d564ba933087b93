"""travel: the kit's web sessions (members signed in to travel's pages).

Revision ID: travel_0003
Revises: travel_0002
"""

from kizuna.kit.oidc_client import create_web_session_table, drop_web_session_table

revision = "travel_0003"
down_revision = "travel_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_web_session_table()


def downgrade() -> None:
    drop_web_session_table()
