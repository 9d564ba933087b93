"""A minimal kit-based service whose web pages sign members in through identity (the way shop,
travel, ... do), used to test single sign-on and logout end to end."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from kizuna.kit import oidc_client, signout
from kizuna.kit.oidc_client import MaybeMember, SignedInMember
from kizuna.kit.service import Service
from kizuna.kit.settings import ServiceSettings


def relying_party(name: str, client_secret: str) -> Service[ServiceSettings]:
    router = APIRouter()
    router.include_router(oidc_client.router)
    router.include_router(signout.router)

    @router.get("/private")
    async def private(member: SignedInMember) -> dict[str, str]:
        return {"member_id": member.member_id, "name": member.display_name, "service": name}

    @router.get("/maybe")
    async def maybe(member: MaybeMember) -> dict[str, str | None]:
        return {"member_id": member.member_id if member else None}

    @router.get("/token")
    async def token(member: SignedInMember) -> dict[str, str]:
        return {"access_token": await member.access_token()}

    @router.get("/")
    async def home() -> dict[str, str]:
        return {"service": name}

    return Service(
        name=name,
        settings=ServiceSettings,
        http=router,
        on_start=[oidc_client.web_sign_in(client_id=name, client_secret=client_secret)],
        migrations_dir=Path(__file__).parent / "rp_migrations",
    )
