"""The shop service: a marketplace where merchants sell and members pay with points and card."""

import asyncio
from typing import Any

from kizuna.kit.db import Database
from kizuna.kit.privacy import Privacy
from kizuna.kit.service import Runtime, Service
from kizuna.shop.v1 import shop_pb2_grpc

from shop import grpc_api, http_api, jobs, pages, privacy, seed, wiring
from shop.settings import Settings


async def seed_on_start(runtime: Runtime[Any]) -> None:
    if runtime.settings.seed_demo:
        await seed.seed(runtime.db)


def seed_command(settings: Settings, _args: list[str]) -> int:
    """`python -m shop seed`: add the demo catalogue (once)."""

    async def run() -> int:
        db = Database(settings.database_url_for("shop"))
        try:
            return await seed.seed(db, seed.demo_owner(settings.kizuna_data_dir))
        finally:
            await db.dispose()

    service.migrate(settings)
    print(f"seeded {asyncio.run(run())} new products")
    return 0


service = Service(
    name="shop",
    settings=Settings,
    http=http_api.router,
    configure_app=pages.mount,
    grpc=[(shop_pb2_grpc.add_ShopServiceServicer_to_server, grpc_api.ShopApi)],
    jobs=[jobs.housekeeping],
    context=wiring.shop_context,
    on_start=[seed_on_start],
    commands={"seed": seed_command},
    web_sign_in_scopes=(
        "openid profile email offline_access points:read points:spend fintech:pay shop:read shop:order shop:sell"
    ),
    privacy=Privacy(export=privacy.export_member, erase=privacy.erase_member),
)
