"""The one Alembic environment every Kizuna service migrates with (async engines)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
url = config.attributes["database_url"]

# Replicas start together (an init container each): on PostgreSQL one migrates while the others
# wait on this session-level advisory lock, then find the database at head and do nothing.
# SQLite serialises writers itself. The key is fixed: each service has a database of its own.
MIGRATION_LOCK_KEY = 0x4B495A554E41  # "KIZUNA"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    # A running service may hold the SQLite write lock for a moment: wait for it, don't fail.
    engine = create_async_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    try:
        async with engine.connect() as connection:
            locked = connection.dialect.name == "postgresql"
            if locked:
                await connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
                await connection.commit()  # the lock is the session's; it outlives this transaction
            try:
                await connection.run_sync(_run)
                await connection.commit()
            finally:
                if locked:
                    await connection.rollback()
                    await connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
                    await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_main())
