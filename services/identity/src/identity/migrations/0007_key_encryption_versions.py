"""identity: the key-encryption key version each signing key is encrypted under (NULL: before
versions; read under every configured version until `reencrypt-keys` rewrites it).

Revision ID: identity_0007
Revises: identity_0006
"""

import sqlalchemy as sa
from alembic import op

revision = "identity_0007"
down_revision = "identity_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identity_signing_key") as batch:
        batch.add_column(sa.Column("kek_version", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identity_signing_key") as batch:
        batch.drop_column("kek_version")
