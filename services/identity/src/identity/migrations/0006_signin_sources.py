"""identity: where each password check came from (known device, usual address, elsewhere).

Revision ID: identity_0006
Revises: identity_0005
"""

import sqlalchemy as sa
from alembic import op

revision = "identity_0006"
down_revision = "identity_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identity_signin_attempt") as batch:
        batch.add_column(sa.Column("device", sa.String(64), nullable=True))
        batch.add_column(sa.Column("source", sa.String(10), nullable=False, server_default="unknown"))
        batch.create_index("ix_identity_signin_attempt_device", ["device"])


def downgrade() -> None:
    with op.batch_alter_table("identity_signin_attempt") as batch:
        batch.drop_index("ix_identity_signin_attempt_device")
        batch.drop_column("source")
        batch.drop_column("device")
