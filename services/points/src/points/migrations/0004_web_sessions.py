"""points: the kit's web session table (members sign in to the wallet page).

Revision ID: points_0004
Revises: points_0003
"""

from kizuna.kit.oidc_client import create_web_session_table, drop_web_session_table

revision = "points_0004"
down_revision = "points_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_web_session_table()


def downgrade() -> None:
    drop_web_session_table()
