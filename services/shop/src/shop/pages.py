"""Web pages on the kit layout, signed in through the kit's OIDC client.

Everyone: storefront (browse by category, search, sort by price) and product pages. Members:
cart, checkout (points 0..min(balance, total) + card), my orders (confirm delivery, cancel,
request a refund). Merchant staff: the console (products, orders, ship, refund). Platform admins
(`SHOP_ADMINS`): merchant verification. Pages call the same domain code as the JSON API; the card
and points are charged with the member's own access token (their consent) kept by the kit.

Every form is a POST carrying a CSRF token bound to the member's sign-in session (an HMAC of the
session id under the client secret), so a form can only be posted from a page this member loaded.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from kizuna.kit import web
from kizuna.kit.bounds import Int64
from kizuna.kit.csrf import FormMember, csrf_token
from kizuna.kit.db import SessionDep
from kizuna.kit.errors import DomainError, NotFound, PermissionDenied
from kizuna.kit.flash import Kind, Param, Word, flash
from kizuna.kit.i18n import gettext as _
from kizuna.kit.oidc_client import MaybeMember, SignedInMember, WebMember
from kizuna.kit.web.wording import for_member, words_for_member

from shop import cart, catalogue, orders
from shop.catalogue import ProductDraft, Sort
from shop.models import Merchant, Product
from shop.pricing import PricedLine, campaign_bonus, unit_bonus
from shop.wiring import Shop, shop_of

log = logging.getLogger("shop.pages")
# Products without a merchant photo show the shipped illustration of their category.
ILLUSTRATED = {"food", "kitchen", "outdoor", "books", "stationery"}


def product_image(product: Product) -> str:
    if product.image_url:
        return str(product.image_url)
    category = product.category if product.category in ILLUSTRATED else "goods"
    return f"{web.IMAGE_PREFIX}{category}.svg"


templates = web.page_templates(
    Path(__file__).parent / "templates",
    service="shop",
    describe=orders.describe,
    payment_state=orders.payment_state,
    product_image=product_image,
)
router = APIRouter(include_in_schema=False)
FormStr = Annotated[str, Form()]
FormInt = Annotated[Int64, Form()]  # int64: a larger number is a 422, not a database error


def _shop(request: Request) -> Shop:
    return shop_of(request.app.state.runtime)


def is_admin(shop: Shop, member: WebMember | None) -> bool:
    return member is not None and member.member_id in shop.settings.shop_admins


async def _render(
    request: Request, name: str, member: WebMember | None, *, status: int = 200, **values: Any
) -> HTMLResponse:
    shop = _shop(request)
    balance = None
    if member is not None:
        try:
            balance = await shop.points.balance(member.member_id)
        except DomainError as exc:  # the page still works; the header shows no balance
            log.warning("points balance unavailable for the header", extra={"error": exc.message})
    context = {
        "member": member,
        "member_name": (member.display_name or member.member_id) if member else None,
        "points_balance": balance,
        "csrf_token": csrf_token(request) if member else "",
        "is_admin": is_admin(shop, member),
        **values,
    }
    return templates.TemplateResponse(request, name, context, status_code=status, headers={"Cache-Control": "no-store"})


def _back(
    request: Request, path: str, *, message: str = "", error: str = "", kind: Kind = "success", **params: Param
) -> Response:
    """Back to a page with a message for the member (in the session, never in the URL): `message`
    is the catalogue's key, translated on the page that shows it (kizuna.kit.flash)."""
    if message:
        flash(request, kind, message, **params)
    if error:
        key, params = words_for_member(error)
        flash(request, "error", key, **params)
    return RedirectResponse(path, status_code=303)


async def _earn_badges(
    shop: Shop, session: SessionDep, member: WebMember | None, products: list[tuple[Product, Merchant]]
) -> dict[str, int]:
    """What buying one of each product would earn this member: points' earn preview on its price
    plus the merchant's campaign bonus. Products points gave no answer for (it is away) get none."""
    if member is None or not products:
        return {}
    now = shop.clock.now()
    previews = await shop.earn.many(member.member_id, {(p.price_minor, p.currency) for p, _ in products})
    rules = await catalogue.campaign_rules_of(session, {m.id for _, m in products}, now)
    badges: dict[str, int] = {}
    for p, m in products:
        base = previews.get((p.price_minor, p.currency))
        if base is not None:
            badges[p.id] = base + unit_bonus(p.id, p.price_minor, p.currency, rules[m.id], now)
    return badges


# ---- storefront and products --------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
@router.get("/search", response_class=HTMLResponse)
async def storefront(
    request: Request,
    session: SessionDep,
    member: MaybeMember,
    category: str | None = None,
    q: str | None = None,
    sort: Sort = "newest",
) -> HTMLResponse:
    products = await catalogue.browse(session, category=category, text=q, sort=sort)
    # The query stays in the search box only: a page heading never repeats text from a link.
    title = _("Search results") if q else _("Shop")
    return await _render(
        request,
        "storefront.html",
        member,
        title=title,
        products=products,
        earn_preview=await _earn_badges(_shop(request), session, member, products),
        categories=await catalogue.categories(session),
        category=category or "",
        q=q or "",
        sort=sort,
    )


@router.get("/products/{product_id}", response_class=HTMLResponse)
async def product(product_id: str, request: Request, session: SessionDep, member: MaybeMember) -> HTMLResponse:
    try:
        item, merchant = await catalogue.product_page(session, product_id)
    except NotFound as exc:
        return await _render(
            request, "error.html", member, status=404, title=_("Not found"), problem=for_member(exc.message)
        )
    earn = (await _earn_badges(_shop(request), session, member, [(item, merchant)])).get(item.id)
    return await _render(request, "product.html", member, title=item.title, p=item, m=merchant, earn_points=earn)


# ---- cart and checkout --------------------------------------------------------------------------


@router.get("/cart", response_class=HTMLResponse)
async def cart_page(request: Request, member: SignedInMember, session: SessionDep) -> HTMLResponse:
    groups = cart.by_merchant(await cart.lines(session, member.member_id))
    return await _render(request, "cart.html", member, title=_("Cart"), groups=groups)


@router.post("/cart/items")
async def add_to_cart(
    request: Request, member: FormMember, session: SessionDep, product_id: FormStr, quantity: FormInt = 1
) -> Response:
    try:
        await cart.set_quantity(session, member.member_id, product_id, quantity, _shop(request).clock.now())
        await session.commit()
    except DomainError as exc:
        return _back(
            request, f"/products/{product_id}" if "no product" not in exc.message else "/cart", error=exc.message
        )
    return _back(request, "/cart", message="Your cart is updated.")


@router.post("/cart/items/{product_id}/remove")
async def remove_from_cart(product_id: str, request: Request, member: FormMember, session: SessionDep) -> Response:
    await cart.remove(session, member.member_id, product_id)
    await session.commit()
    return _back(request, "/cart", message="Removed from your cart.")


@router.get("/checkout", response_class=HTMLResponse)
async def checkout_page(
    request: Request, member: SignedInMember, session: SessionDep, merchant_id: str, points: Int64 = 0
) -> Response:
    """The cart's products of one merchant, the points the member chooses (`points`, kept within
    0..min(balance, total)), what the card pays, and what the order earns."""
    shop = _shop(request)
    lines = [ln for ln in await cart.lines(session, member.member_id) if ln.merchant.id == merchant_id]
    if not lines:
        return _back(request, "/cart", error="Nothing from this merchant is in your cart.")
    currency = lines[0].product.currency
    total = sum(ln.amount_minor for ln in lines)
    try:
        balance: int | None = await shop.points.balance(member.member_id)
    except DomainError as exc:  # the card can still pay it all
        log.warning("points balance unavailable for the checkout", extra={"error": exc.message})
        balance = None
    max_points = min(balance or 0, total)
    chosen = max(0, min(points, max_points))
    card = total - chosen
    # Earned on the money paid by card (points used earn nothing), plus the merchant's campaign bonus.
    now = shop.clock.now()
    rules = await catalogue.campaign_rules(session, merchant_id, now)
    priced = tuple(
        PricedLine(ln.product.id, ln.product.title, ln.item.quantity, ln.product.price_minor, currency) for ln in lines
    )
    bonus = campaign_bonus(priced, rules, now)
    base = await shop.earn.one(member.member_id, card, currency) if card > 0 else 0
    return await _render(
        request,
        "checkout.html",
        member,
        title=_("Checkout"),
        lines=lines,
        merchant=lines[0].merchant,
        total=total,
        currency=currency,
        balance=balance,
        max_points=max_points,
        points=chosen,
        card=card,
        earn_points=None if base is None else base + bonus,
        key=uuid.uuid4().hex,
    )


@router.post("/checkout")
async def place_order(
    request: Request, member: FormMember, merchant_id: FormStr, idempotency_key: FormStr, points: FormInt = 0
) -> Response:
    try:
        done = await _shop(request).checkout.checkout(
            member_id=member.member_id,
            member_token=await member.access_token(),
            merchant_id=merchant_id,
            points=points,
            idempotency_key=idempotency_key,
        )
    except DomainError as exc:
        key, params = words_for_member(exc.message)
        flash(request, "error", key, **params)
        return RedirectResponse(f"/checkout?merchant_id={quote(merchant_id)}", status_code=303)
    return _back(request, f"/orders#order-{done.order_id}", message="Thank you! Your order is placed.")


# ---- my orders ----------------------------------------------------------------------------------


@router.get("/orders", response_class=HTMLResponse)
async def my_orders(request: Request, member: SignedInMember, session: SessionDep) -> HTMLResponse:
    mine = [(o, await orders.order_lines(session, o.id)) for o in await orders.member_orders(session, member.member_id)]
    return await _render(request, "orders.html", member, title=_("My orders"), orders=mine)


async def _own_order(session: SessionDep, order_id: str, member: WebMember) -> None:
    order = await orders.get_order(session, order_id)
    if order.member_id != member.member_id:
        raise PermissionDenied("this order belongs to another member")
    await session.close()


@router.post("/orders/{order_id}/confirm")
async def confirm_delivery(order_id: str, request: Request, member: FormMember) -> Response:
    try:
        await _shop(request).orders.complete(order_id, member.member_id)
    except DomainError as exc:
        return _back(request, "/orders", error=exc.message)
    return _back(request, "/orders", message="Thanks for confirming the delivery.")


@router.post("/orders/{order_id}/cancel")
async def cancel_order(order_id: str, request: Request, member: FormMember, session: SessionDep) -> Response:
    try:
        await _own_order(session, order_id, member)
        await _shop(request).orders.cancel(order_id)
    except DomainError as exc:
        return _back(request, "/orders", error=exc.message)
    return _back(request, "/orders", message="Your order is cancelled; your points and the card hold are released.")


@router.post("/orders/{order_id}/refund-request")
async def request_refund(
    order_id: str, request: Request, member: FormMember, session: SessionDep, reason: FormStr = ""
) -> Response:
    try:
        await orders.request_refund(session, order_id, member.member_id, reason, _shop(request).clock.now())
        await session.commit()
    except DomainError as exc:
        return _back(request, "/orders", error=exc.message)
    return _back(request, "/orders", message="Your refund request is sent to the merchant.")


# ---- merchant console ---------------------------------------------------------------------------


@router.get("/merchant", response_class=HTMLResponse)
async def merchant_console(request: Request, member: SignedInMember, session: SessionDep) -> HTMLResponse:
    consoles = []
    for merchant, role in await catalogue.merchants_of(session, member.member_id):
        merchant_orders = [
            (o, await orders.order_lines(session, o.id)) for o in await orders.merchant_orders(session, merchant.id)
        ]
        consoles.append(
            {
                "merchant": merchant,
                "role": role,
                "orders": merchant_orders,
                "products": await catalogue.merchant_products(session, merchant.id),
            }
        )
    return await _render(request, "merchant.html", member, title=_("Merchant console"), consoles=consoles)


@router.post("/merchant/apply")
async def apply_as_merchant(
    request: Request, member: FormMember, session: SessionDep, name: FormStr, description: FormStr = ""
) -> Response:
    try:
        await catalogue.apply(session, member.member_id, name, description, _shop(request).clock.now())
        await session.commit()
    except DomainError as exc:
        return _back(request, "/merchant", error=exc.message)
    return _back(request, "/merchant", message="Thanks for applying; a platform admin will verify your shop.")


@router.post("/merchant/{merchant_id}/products")
async def add_product(
    merchant_id: str,
    request: Request,
    member: FormMember,
    session: SessionDep,
    title: FormStr,
    price_minor: FormInt,
    stock: FormInt,
    category: FormStr,
    description: FormStr = "",
    image_url: FormStr = "",
) -> Response:
    try:
        merchant = await catalogue.require_staff(session, merchant_id, member.member_id)
        draft = ProductDraft(title, description, price_minor, "JPY", stock, category, image_url)
        await catalogue.add_product(session, merchant, draft, _shop(request).clock.now())
        await session.commit()
    except DomainError as exc:
        return _back(request, "/merchant", error=exc.message)
    return _back(request, "/merchant", message="%(title)s is on sale.", title=title.strip())


@router.post("/merchant/{merchant_id}/products/{product_id}")
async def update_product(
    merchant_id: str,
    product_id: str,
    request: Request,
    member: FormMember,
    session: SessionDep,
    price_minor: FormInt,
    stock: FormInt,
    active: FormStr = "",
) -> Response:
    try:
        merchant = await catalogue.require_staff(session, merchant_id, member.member_id)
        current = await session.get(Product, product_id)
        if current is None or current.merchant_id != merchant_id:
            raise NotFound(f"merchant {merchant_id} has no product {product_id!r}")
        draft = ProductDraft(
            current.title,
            current.description,
            price_minor,
            current.currency,
            stock,
            current.category,
            current.image_url,
        )
        await catalogue.update_product(session, merchant, product_id, draft, active == "on", _shop(request).clock.now())
        await session.commit()
    except DomainError as exc:
        return _back(request, "/merchant", error=exc.message)
    return _back(request, "/merchant", message="The product is updated.")


async def _merchant_order(session: SessionDep, merchant_id: str, order_id: str, member: WebMember) -> None:
    await catalogue.require_staff(session, merchant_id, member.member_id)
    order = await orders.get_order(session, order_id)
    if order.merchant_id != merchant_id:
        raise PermissionDenied(f"order {order_id} is not merchant {merchant_id}'s")
    await session.close()


@router.post("/merchant/{merchant_id}/orders/{order_id}/{action}")
async def merchant_order_action(
    merchant_id: str,
    order_id: str,
    action: str,
    request: Request,
    member: FormMember,
    session: SessionDep,
    tracking: FormStr = "",
) -> Response:
    lifecycle = _shop(request).orders
    done = {"ship": "shipped", "cancel": "cancelled", "refund": "refunded"}
    try:
        if action not in done:
            raise NotFound(f"no order action {action!r}")
        await _merchant_order(session, merchant_id, order_id, member)
        if action == "ship":
            await lifecycle.ship(order_id, tracking)
        elif action == "cancel":
            await lifecycle.cancel(order_id)
        else:
            await lifecycle.refund(order_id)
    except DomainError as exc:
        return _back(request, "/merchant", error=exc.message)
    return _back(
        request,
        "/merchant",
        message="Order %(order)s is %(status)s.",
        order=order_id,
        status=Word(done[action]),
    )


# ---- platform admin -----------------------------------------------------------------------------


@router.get("/admin/merchants", response_class=HTMLResponse)
async def admin_merchants(request: Request, member: SignedInMember, session: SessionDep) -> HTMLResponse:
    if not is_admin(_shop(request), member):
        return await _render(
            request,
            "error.html",
            member,
            status=403,
            title=_("Not allowed"),
            problem=_("Only a platform admin may verify merchants."),
        )
    return await _render(
        request, "admin.html", member, title=_("Merchant verification"), merchants=await catalogue.merchants(session)
    )


@router.post("/admin/merchants/{merchant_id}/{decision}")
async def admin_decide(
    merchant_id: str, decision: str, request: Request, member: FormMember, session: SessionDep
) -> Response:
    shop = _shop(request)
    if not is_admin(shop, member):
        raise HTTPException(403, "Only a platform admin may verify merchants.")
    try:
        merchant = await catalogue.decide(session, merchant_id, decision, member.member_id, shop.clock.now())
        await session.commit()
    except DomainError as exc:
        return _back(request, "/admin/merchants", error=exc.message)
    return _back(
        request,
        "/admin/merchants",
        message="%(merchant)s is %(status)s.",
        merchant=merchant.name,
        status=Word(merchant.status),
    )


def mount(app: FastAPI) -> None:
    app.include_router(router)
