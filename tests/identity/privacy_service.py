"""A small kit service that holds member data and speaks the privacy protocol (export and erasure)
the way shop, travel, ... do, with web sign-in so that erasure's back-channel logout reaches it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from kizuna.kit import oidc_client, signout
from kizuna.kit.oidc_client import SignedInMember
from kizuna.kit.privacy import Privacy
from kizuna.kit.service import Service
from kizuna.kit.settings import ServiceSettings
from sqlmodel.ext.asyncio.session import AsyncSession


def privacy_service(name: str, client_secret: str, held: dict[str, list[str]]) -> Service[ServiceSettings]:
    """`held` is what the service keeps per member (its "database" for export and erasure)."""

    async def export(session: AsyncSession, member_id: str) -> dict[str, Any]:
        return {"orders": list(held.get(member_id, []))}

    async def erase(session: AsyncSession, member_id: str) -> None:
        held.pop(member_id, None)

    router = APIRouter()
    router.include_router(oidc_client.router)
    router.include_router(signout.router)

    @router.get("/private")
    async def private(member: SignedInMember) -> dict[str, str]:
        return {"member_id": member.member_id}

    return Service(
        name=name,
        settings=ServiceSettings,
        http=router,
        on_start=[oidc_client.web_sign_in(client_id=name, client_secret=client_secret)],
        migrations_dir=Path(__file__).parent / "rp_migrations",
        privacy=Privacy(export=export, erase=erase),
    )
