"""Merchants (apply -> verified by a platform admin -> active), their staff, products and campaigns,
and the storefront's queries: browse by category, search title and description, sort by price."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from sqlalchemy import ColumnElement, func, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shop.models import Campaign, Merchant, MerchantStaff, Product, new_id
from shop.pricing import CampaignRule

PENDING, ACTIVE, SUSPENDED, REJECTED = "pending", "active", "suspended", "rejected"
Sort = Literal["price_asc", "price_desc", "newest", "title"]
MAX_STOCK = 1_000_000


# ---- validation (pure) ---------------------------------------------------------------------------


def _text(value: str, what: str, *, max_len: int, required: bool = True) -> str:
    value = value.strip()
    if required and not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(f"{what} must be at most {max_len} characters")
    return value


def _currency(code: str) -> str:
    if len(code) != 3 or not code.isalpha() or not code.isupper():
        raise InvalidArgument(f"currency must be an ISO 4217 code like JPY (got {code!r})")
    return code


def _image_url(url: str) -> str:
    url = url.strip()
    if url and urlsplit(url).scheme not in ("http", "https"):
        raise InvalidArgument("image_url must be an http(s) URL")
    return url


@dataclass(frozen=True)
class ProductDraft:
    title: str
    description: str
    price_minor: int
    currency: str
    stock: int
    category: str
    image_url: str = ""

    def validated(self) -> ProductDraft:
        if self.price_minor <= 0:
            raise InvalidArgument(f"price must be a positive integer amount of minor units (got {self.price_minor})")
        if not 0 <= self.stock <= MAX_STOCK:
            raise InvalidArgument(f"stock must be between 0 and {MAX_STOCK} (got {self.stock})")
        return ProductDraft(
            title=_text(self.title, "title", max_len=200),
            description=_text(self.description, "description", max_len=5000, required=False),
            price_minor=self.price_minor,
            currency=_currency(self.currency),
            stock=self.stock,
            category=_text(self.category, "category", max_len=60).lower(),
            image_url=_image_url(self.image_url),
        )


# ---- merchants -----------------------------------------------------------------------------------


async def apply(session: AsyncSession, member_id: str, name: str, description: str, now: datetime) -> Merchant:
    """A member applies to sell; they become the merchant's owner. Pending until an admin verifies."""
    merchant = Merchant(
        id=new_id("mch"),
        name=_text(name, "name", max_len=200),
        description=_text(description, "description", max_len=5000, required=False),
        status=PENDING,
        applied_by=member_id,
        created_at=now,
    )
    session.add(merchant)
    await session.flush()
    session.add(MerchantStaff(merchant_id=merchant.id, member_id=member_id, role="owner"))
    return merchant


async def get_merchant(session: AsyncSession, merchant_id: str) -> Merchant:
    merchant = await session.get(Merchant, merchant_id)
    if merchant is None:
        raise NotFound(f"no merchant {merchant_id!r}")
    return merchant


async def decide(session: AsyncSession, merchant_id: str, decision: str, admin_id: str, now: datetime) -> Merchant:
    """A platform admin verifies (-> active), rejects, suspends or reinstates a merchant."""
    merchant = await get_merchant(session, merchant_id)
    allowed = {
        "verify": ({PENDING}, ACTIVE),
        "reject": ({PENDING}, REJECTED),
        "suspend": ({ACTIVE}, SUSPENDED),
        "reinstate": ({SUSPENDED}, ACTIVE),
    }
    if decision not in allowed:
        raise InvalidArgument(f"unknown decision {decision!r}; use one of {sorted(allowed)}")
    sources, target = allowed[decision]
    if merchant.status not in sources:
        raise FailedPrecondition(f"cannot {decision} a merchant that is {merchant.status}")
    merchant.status = target
    if decision == "verify":
        merchant.verified_at, merchant.verified_by = now, admin_id
    session.add(merchant)
    return merchant


async def merchants(session: AsyncSession, status: str | None = None) -> list[Merchant]:
    query = select(Merchant).order_by(col(Merchant.created_at))
    if status:
        query = query.where(Merchant.status == status)
    return list((await session.exec(query)).all())


async def merchants_of(session: AsyncSession, member_id: str) -> list[tuple[Merchant, str]]:
    rows = await session.exec(
        select(Merchant, MerchantStaff.role)
        .join(MerchantStaff, col(MerchantStaff.merchant_id) == col(Merchant.id))
        .where(MerchantStaff.member_id == member_id)
        .order_by(col(Merchant.created_at))
    )
    return [(m, role) for m, role in rows.all()]


async def require_staff(session: AsyncSession, merchant_id: str, member_id: str, *, owner: bool = False) -> Merchant:
    """The member works for the merchant (as its owner, if `owner`)."""
    merchant = await get_merchant(session, merchant_id)
    staff = await session.get(MerchantStaff, (merchant_id, member_id))
    if staff is None or (owner and staff.role != "owner"):
        raise PermissionDenied(f"member is not {'the owner' if owner else 'staff'} of merchant {merchant_id}")
    return merchant


async def add_staff(session: AsyncSession, merchant_id: str, member_id: str) -> MerchantStaff:
    member_id = _text(member_id, "member_id", max_len=100)
    existing = await session.get(MerchantStaff, (merchant_id, member_id))
    if existing is not None:
        return existing
    staff = MerchantStaff(merchant_id=merchant_id, member_id=member_id, role="staff")
    session.add(staff)
    return staff


# ---- products ------------------------------------------------------------------------------------


async def add_product(session: AsyncSession, merchant: Merchant, draft: ProductDraft, now: datetime) -> Product:
    d = draft.validated()
    product = Product(
        id=new_id("prd"),
        merchant_id=merchant.id,
        title=d.title,
        description=d.description,
        price_minor=d.price_minor,
        currency=d.currency,
        stock=d.stock,
        category=d.category,
        image_url=d.image_url,
        active=True,
        created_at=now,
        updated_at=now,
    )
    session.add(product)
    return product


async def update_product(
    session: AsyncSession, merchant: Merchant, product_id: str, draft: ProductDraft, active: bool, now: datetime
) -> Product:
    product = await session.get(Product, product_id)
    if product is None or product.merchant_id != merchant.id:
        raise NotFound(f"merchant {merchant.id} has no product {product_id!r}")
    d = draft.validated()
    for name in ("title", "description", "price_minor", "currency", "stock", "category", "image_url"):
        setattr(product, name, getattr(d, name))
    product.active, product.updated_at = active, now
    session.add(product)
    return product


async def product_page(session: AsyncSession, product_id: str) -> tuple[Product, Merchant]:
    """A product that the storefront shows: it exists, is on sale, and its merchant is active."""
    row = (
        await session.exec(
            select(Product, Merchant)
            .join(Merchant, col(Merchant.id) == col(Product.merchant_id))
            .where(Product.id == product_id)
        )
    ).first()
    if row is None or not row[0].active or row[1].status != ACTIVE:
        raise NotFound(f"no product {product_id!r} on sale")
    return row[0], row[1]


async def browse(
    session: AsyncSession,
    *,
    category: str | None = None,
    text: str | None = None,
    sort: Sort = "newest",
    limit: int = 50,
    offset: int = 0,
) -> list[tuple[Product, Merchant]]:
    """Products on sale from active merchants, optionally in a category and/or matching a text."""
    query = (
        select(Product, Merchant)
        .join(Merchant, col(Merchant.id) == col(Product.merchant_id))
        .where(col(Product.active).is_(True), Merchant.status == ACTIVE)
    )
    if category:
        query = query.where(Product.category == category.strip().lower())
    for word in (text or "").lower().split():
        query = query.where(
            or_(
                func.lower(col(Product.title)).contains(word, autoescape=True),
                func.lower(col(Product.description)).contains(word, autoescape=True),
            )
        )
    order: dict[str, tuple[ColumnElement[Any], ...]] = {
        "price_asc": (col(Product.price_minor).asc(), col(Product.id).asc()),
        "price_desc": (col(Product.price_minor).desc(), col(Product.id).asc()),
        "title": (col(Product.title).asc(), col(Product.id).asc()),
        "newest": (col(Product.id).desc(),),
    }
    if sort not in order:
        raise InvalidArgument(f"sort must be one of {sorted(order)}")
    query = query.order_by(*order[sort]).limit(max(1, min(limit, 200))).offset(max(0, offset))
    return [(p, m) for p, m in (await session.exec(query)).all()]


async def categories(session: AsyncSession) -> list[tuple[str, int]]:
    rows = await session.exec(
        select(Product.category, func.count())
        .join(Merchant, col(Merchant.id) == col(Product.merchant_id))
        .where(col(Product.active).is_(True), Merchant.status == ACTIVE)
        .group_by(col(Product.category))
        .order_by(col(Product.category))
    )
    return [(c, int(n)) for c, n in rows.all()]


async def merchant_products(session: AsyncSession, merchant_id: str) -> list[Product]:
    rows = await session.exec(select(Product).where(Product.merchant_id == merchant_id).order_by(col(Product.id)))
    return list(rows.all())


# ---- campaigns -----------------------------------------------------------------------------------


async def add_campaign(
    session: AsyncSession,
    merchant: Merchant,
    *,
    name: str,
    extra_bp: int,
    starts_at: datetime,
    ends_at: datetime,
    product_id: str | None,
    now: datetime,
) -> Campaign:
    if not 0 < extra_bp <= 5_000:
        raise InvalidArgument(f"extra_bp must be between 1 and 5000 basis points (got {extra_bp})")
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise InvalidArgument("campaign times need a time zone")
    if ends_at <= starts_at:
        raise InvalidArgument("a campaign must end after it starts")
    if product_id:
        product = await session.get(Product, product_id)
        if product is None or product.merchant_id != merchant.id:
            raise NotFound(f"merchant {merchant.id} has no product {product_id!r}")
    campaign = Campaign(
        id=new_id("cmp"),
        merchant_id=merchant.id,
        product_id=product_id or None,
        name=_text(name, "name", max_len=200),
        extra_bp=extra_bp,
        starts_at=starts_at,
        ends_at=ends_at,
        created_at=now,
    )
    session.add(campaign)
    return campaign


async def campaign_rules(session: AsyncSession, merchant_id: str, at: datetime) -> list[CampaignRule]:
    rows = await session.exec(
        select(Campaign).where(
            Campaign.merchant_id == merchant_id, col(Campaign.starts_at) <= at, col(Campaign.ends_at) > at
        )
    )
    return [CampaignRule(c.product_id, c.extra_bp, c.starts_at, c.ends_at) for c in rows.all()]


async def campaign_rules_of(
    session: AsyncSession, merchant_ids: set[str], at: datetime
) -> dict[str, list[CampaignRule]]:
    """The campaigns live at `at` of each of these merchants (a storefront's worth, in one query)."""
    rules: dict[str, list[CampaignRule]] = {m: [] for m in merchant_ids}
    if not merchant_ids:
        return rules
    rows = await session.exec(
        select(Campaign).where(
            col(Campaign.merchant_id).in_(merchant_ids), col(Campaign.starts_at) <= at, col(Campaign.ends_at) > at
        )
    )
    for c in rows.all():
        rules[c.merchant_id].append(CampaignRule(c.product_id, c.extra_bp, c.starts_at, c.ends_at))
    return rules


async def campaigns(session: AsyncSession, merchant_id: str) -> list[Campaign]:
    rows = await session.exec(
        select(Campaign).where(Campaign.merchant_id == merchant_id).order_by(col(Campaign.starts_at))
    )
    return list(rows.all())
