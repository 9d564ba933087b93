"""The points service: what it serves, consumes and publishes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from kizuna.kit.db import run_in_session
from kizuna.kit.service import Service
from kizuna.points.v1 import points_pb2_grpc
from sqlmodel.ext.asyncio.session import AsyncSession

from points import audit, campaigns, events, grpc_api, http_api, member_data
from points.expiry import expiry_job
from points.settings import Settings


def audit_command(settings: Settings, _args: list[str]) -> int:
    """`python -m points audit`: check the ledger's invariants; exit 1 if any is broken."""
    report = run_in_session(settings.database_url_for("points"), audit.audit)
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1


def seed_command(settings: Settings, _args: list[str]) -> int:
    """`python -m points seed`: the welcome bonus and one live demo campaign, once (by name)."""
    url = settings.database_url_for("points")
    service.migrate(settings)
    earners = [e.service for e in settings.kizuna_earners]

    async def work(session: AsyncSession) -> list[str]:
        created = await campaigns.seed(session, datetime.now(UTC), earners, settings.max_credit_points)
        await session.commit()
        return created

    print(json.dumps({"campaigns_created": run_in_session(url, work)}))
    return 0


service = Service(
    name="points",
    settings=Settings,
    http=http_api.router,
    grpc=[(points_pb2_grpc.add_PointsServiceServicer_to_server, grpc_api.PointsApi)],
    consumers=events.consumers,
    jobs=[expiry_job],
    commands={"audit": audit_command, "seed": seed_command},
    # Export and erasure for the member's account center (ledger entries stay, under the bare ID).
    privacy=member_data.privacy,
    # The wallet page: members sign in through identity; the kit adds /auth/*, the layout's
    # stylesheet and the header's /_kizuna/me (which reads the balance from PointsService).
    web_sign_in_scopes="openid profile email offline_access points:read",
)
