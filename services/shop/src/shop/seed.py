"""The demo catalogue: two verified merchants with products in a few categories (idempotent)."""

from __future__ import annotations

from kizuna.kit.db import Database, utcnow
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shop import catalogue
from shop.catalogue import ProductDraft
from shop.models import Merchant

DEMO_OWNER = "mbr_demo_merchant"

DEMO: dict[str, tuple[str, list[ProductDraft]]] = {
    "Sakura Tea House": ("Green teas and tea ware from Shizuoka.", [
        ProductDraft("Sencha, first flush (100 g)", "Bright, grassy first-harvest green tea.", 1800, "JPY", 40,
                     "food", "https://picsum.photos/seed/sencha/400/300"),
        ProductDraft("Matcha, ceremonial grade (30 g)", "Stone-ground matcha for usucha and koicha.", 3200, "JPY",
                     25, "food", "https://picsum.photos/seed/matcha/400/300"),
        ProductDraft("Tokoname kyusu teapot", "Red clay side-handle teapot with a fine mesh.", 6800, "JPY", 8,
                     "kitchen", "https://picsum.photos/seed/kyusu/400/300"),
        ProductDraft("Hojicha roasted tea (200 g)", "Roasted green tea, low in caffeine.", 1200, "JPY", 60,
                     "food", "https://picsum.photos/seed/hojicha/400/300"),
    ]),
    "Kumo Outdoor": ("Light gear for hiking and camping.", [
        ProductDraft("Ultralight down jacket", "800-fill down, packs into its own pocket.", 19800, "JPY", 12,
                     "outdoor", "https://picsum.photos/seed/jacket/400/300"),
        ProductDraft("Titanium camping mug 450 ml", "Single-wall titanium mug with folding handles.", 3900, "JPY",
                     30, "outdoor", "https://picsum.photos/seed/mug/400/300"),
        ProductDraft("Trekking poles (pair)", "Carbon, three sections, cork grips.", 12800, "JPY", 15, "outdoor",
                     "https://picsum.photos/seed/poles/400/300"),
        ProductDraft("Cast iron skillet 26 cm", "Pre-seasoned skillet for stove and campfire.", 5400, "JPY", 20,
                     "kitchen", "https://picsum.photos/seed/skillet/400/300"),
    ]),
}


async def seed_catalogue(session: AsyncSession) -> int:
    """Add the demo merchants and products unless a merchant exists; returns products added."""
    if (await session.exec(select(Merchant).limit(1))).first() is not None:
        return 0
    now, added = utcnow(), 0
    for name, (description, products) in DEMO.items():
        merchant = await catalogue.apply(session, DEMO_OWNER, name, description, now)
        await catalogue.decide(session, merchant.id, "verify", "seed", now)
        for draft in products:
            await catalogue.add_product(session, merchant, draft, now)
            added += 1
    return added


async def seed(db: Database) -> int:
    async with db.transaction() as session:
        return await seed_catalogue(session)
