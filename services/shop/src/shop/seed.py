"""The demo catalogue: verified merchants with ~20 products in a few categories, prices in JPY.

Idempotent: merchants are matched by name and products by title within their merchant, so a
second run (every `make up`) adds nothing and a newer seed adds only what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from kizuna.kit.db import Database, utcnow
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shop import catalogue
from shop.catalogue import ProductDraft
from shop.models import Merchant, Product

DEMO_OWNER = "mbr_demo_merchant"


def _p(title: str, description: str, price: int, stock: int, category: str, seed: str) -> ProductDraft:
    # No photo URL: the pages show the illustration of the category shipped with the kit, so the
    # demo needs no network. (`seed` names the product's picture should one be added later.)
    return ProductDraft(title, description, price, "JPY", stock, category, "")


# The photo site the first demo catalogue pointed at; a seed run clears these (offline, broken).
_OLD_DEMO_IMAGES = "https://picsum.photos/"


DEMO: dict[str, tuple[str, list[ProductDraft]]] = {
    "Sakura Tea House": (
        "Green teas and tea ware from Shizuoka.",
        [
            _p("Sencha, first flush (100 g)", "Bright, grassy first-harvest green tea.", 1800, 40, "food", "sencha"),
            _p(
                "Matcha, ceremonial grade (30 g)",
                "Stone-ground matcha for usucha and koicha.",
                3200,
                25,
                "food",
                "matcha",
            ),
            _p("Hojicha roasted tea (200 g)", "Roasted green tea, low in caffeine.", 1200, 60, "food", "hojicha"),
            _p("Genmaicha with matcha (200 g)", "Green tea with toasted brown rice.", 980, 80, "food", "genmaicha"),
            _p("Tokoname kyusu teapot", "Red clay side-handle teapot with a fine mesh.", 6800, 8, "kitchen", "kyusu"),
            _p("Bamboo matcha whisk (chasen)", "Hand-carved 80-prong whisk from Nara.", 2400, 30, "kitchen", "chasen"),
            _p(
                "Hasami porcelain tea cups (set of 2)",
                "Stackable, dishwasher-safe cups.",
                3300,
                20,
                "kitchen",
                "hasami",
            ),
        ],
    ),
    "Kumo Outdoor": (
        "Light gear for hiking and camping.",
        [
            _p("Ultralight down jacket", "800-fill down, packs into its own pocket.", 19800, 12, "outdoor", "jacket"),
            _p(
                "Titanium camping mug 450 ml",
                "Single-wall titanium mug with folding handles.",
                3900,
                30,
                "outdoor",
                "mug",
            ),
            _p("Trekking poles (pair)", "Carbon, three sections, cork grips.", 12800, 15, "outdoor", "poles"),
            _p(
                "Cast iron skillet 26 cm",
                "Pre-seasoned skillet for stove and campfire.",
                5400,
                20,
                "kitchen",
                "skillet",
            ),
            _p("Tenugui hiking towel", "Quick-drying cotton towel printed in Kyoto.", 1100, 50, "outdoor", "tenugui"),
            _p("Two-person dome tent", "1.6 kg, double wall, 20-minute pitch.", 34800, 6, "outdoor", "tent"),
            _p("Headlamp 400 lm (USB-C)", "Rechargeable, red night mode, IPX4.", 4980, 25, "outdoor", "headlamp"),
        ],
    ),
    "Akari Books & Stationery": (
        "Notebooks, pens and books for slow afternoons.",
        [
            _p("A5 dot-grid notebook", "Tomoe River paper, 368 pages, lies flat.", 2750, 40, "stationery", "notebook"),
            _p("Fountain pen, fine nib", "Resin body, steel nib, converter included.", 3850, 18, "stationery", "pen"),
            _p("Washi tape set (10 rolls)", "Seasonal patterns from a Gifu mill.", 1650, 60, "stationery", "washi"),
            _p("Japanese home cooking (book)", "120 everyday recipes, in English.", 3080, 14, "books", "cookbook"),
            _p("Haiku for every season (book)", "A bilingual anthology with notes.", 1980, 22, "books", "haiku"),
            _p(
                "Furoshiki wrapping cloth 70 cm",
                "Cotton, reversible, wraps gifts and bottles.",
                2200,
                35,
                "home",
                "furoshiki",
            ),
        ],
    ),
}


def demo_owner(data_dir: Path) -> str:
    """The demo merchant's staff member: the one `python -m identity seed` created, when it ran."""
    path = data_dir / "demo-members.json"
    if path.exists():
        merchant = json.loads(path.read_text()).get("merchant")
        if merchant:
            return str(merchant["member_id"])
    return DEMO_OWNER


async def seed_catalogue(session: AsyncSession, owner: str = DEMO_OWNER) -> int:
    """Add the demo merchants and products that are missing; returns how many products were added."""
    now, added = utcnow(), 0
    for name, (description, products) in DEMO.items():
        merchant = (await session.exec(select(Merchant).where(Merchant.name == name))).first()
        if merchant is None:
            merchant = await catalogue.apply(session, owner, name, description, now)
            await catalogue.decide(session, merchant.id, "verify", "seed", now)
        titles = set((await session.exec(select(Product.title).where(Product.merchant_id == merchant.id))).all())
        stale = select(Product).where(
            Product.merchant_id == merchant.id, Product.image_url.startswith(_OLD_DEMO_IMAGES)
        )
        for product in (await session.exec(stale)).all():
            product.image_url = ""
            session.add(product)
        for draft in products:
            if draft.title not in titles:
                await catalogue.add_product(session, merchant, draft, now)
                added += 1
    return added


async def seed(db: Database, owner: str = DEMO_OWNER) -> int:
    async with db.transaction() as session:
        return await seed_catalogue(session, owner)
