"""The shop's web pages on the kit layout, driven like a browser: a member signed in through the
kit's OIDC client (its session row and cookie, as /auth/callback leaves them), real points and
fintech behind the checkout. Also the privacy protocol: export and erasure."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.kit.testing import wait_until

from services.shop.tests.shop_support import ADMIN

from .shop_world import ShopWorld, publish_identity_event

OWNER = "mbr_owner"


async def _browser(w: ShopWorld, member: str | None, name: str = "Hana") -> httpx.AsyncClient:
    """A browser for the shop; signed in as `member` (None: anonymous, single-sign-on already checked)."""
    return await w.api.browser(member, name)


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


async def _post(browser: httpx.AsyncClient, path: str, data: dict[str, object], csrf: str) -> httpx.Response:
    resp = await browser.post(path, data={**data, "csrf_token": csrf}, follow_redirects=True)
    assert resp.status_code == 200, resp.text
    return resp


async def test_storefront_search_and_product_pages_on_the_kit_layout(world: ShopWorld) -> None:
    w = world
    merchant = await w.api.active_merchant(OWNER, name="Sakura Tea")
    tea = await w.api.product(merchant, OWNER, title="Sencha first flush", price=1800, description="grassy")
    await w.api.product(merchant, OWNER, title="Cast iron skillet", price=5400, category="kitchen")
    async with await _browser(w, None) as browser:
        home = await browser.get("/")
        assert home.status_code == 200 and 'class="kz-header"' in home.text and "/_kizuna/kizuna.css" in home.text
        assert "Sencha first flush" in home.text and "¥1,800" in home.text and "Sign in" in home.text
        # A Japanese browser gets the page in Japanese; the header's switch changes it for good.
        ja = await browser.get("/", headers={"accept-language": "ja-JP,ja;q=0.9,en;q=0.5"})
        assert '<html lang="ja"' in ja.text and "すべてのカテゴリ" in ja.text and "¥1,800" in ja.text
        assert "All categories" not in ja.text and 'hreflang="en">English</a>' in ja.text
        switched = await browser.get("/_kizuna/lang/en", params={"next": "/products/x"})
        assert switched.status_code == 303 and switched.headers["location"] == "/products/x"
        english = await browser.get("/", headers={"accept-language": "ja"})
        assert '<html lang="en"' in english.text and "All categories" in english.text
        assert (await browser.get("/_kizuna/lang/en", params={"next": "//evil.example"})).headers["location"] == "/"
        assert (await browser.get("/_kizuna/lang/fr")).status_code == 404
        found = await browser.get("/search", params={"q": "GRASSY"})
        assert "Sencha first flush" in found.text and "Cast iron skillet" not in found.text
        assert "<h1>Search results</h1>" in found.text and ">GRASSY<" not in found.text  # in the search box only
        by_price = await browser.get("/", params={"sort": "price_desc", "category": "kitchen"})
        assert "Cast iron skillet" in by_price.text and "Sencha" not in by_price.text
        page = await browser.get(f"/products/{tea}")
        assert page.status_code == 200 and "Sold by Sakura Tea" in page.text and "Sign in to buy" in page.text
        assert (await browser.get("/products/prd_nope")).status_code == 404
        for path in ("/cart", "/orders", "/merchant", "/checkout?merchant_id=x"):
            resp = await browser.get(path, headers={"accept": "text/html"})
            assert resp.status_code == 303 and resp.headers["location"].startswith("/auth/login?next=")
    # A client without cookies (a crawler, a link preview) gets the anonymous storefront and product
    # page; a browser's silent single-sign-on check is made by the layout's script.
    async with httpx.AsyncClient(base_url=str(w.api.http.base_url)) as fresh:
        first = await fresh.get("/")
        assert first.status_code == 200 and "Sencha first flush" in first.text and "Sign in" in first.text
        assert (await fresh.get(f"/products/{tea}")).status_code == 200
        # Every page is unframeable, under a CSP, and keeps its URL to itself; no text from the URL.
        framed = await fresh.get("/", params={"message": "Your account is locked, call +81-0000", "error": "x"})
        assert framed.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in framed.headers["content-security-policy"]
        assert framed.headers["referrer-policy"] == "strict-origin-when-cross-origin"
        assert "call +81-0000" not in framed.text


async def test_member_buys_with_points_and_card_merchant_ships_member_confirms(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=700)
    merchant = await w.api.active_merchant(OWNER, name="Kumo Outdoor")
    mug = await w.api.product(merchant, OWNER, title="Titanium mug", price=3900, stock=4)
    now = datetime.now(UTC)
    await w.api.ok(
        "POST",
        f"/api/merchants/{merchant}/campaigns",
        OWNER,
        {
            "name": "Mug month",
            "extra_bp": 100,
            "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(days=30)).isoformat(),
            "product_id": mug,
        },
    )
    async with await _browser(w, buyer) as browser, await _browser(w, OWNER, "Ken") as shopkeeper:
        product = await browser.get(f"/products/{mug}")
        assert "Hana" in product.text and "700 pt" in product.text  # the header: name and live balance
        earn = re.search(r'data-earn="(\d+)">earn (\d+) pt<', product.text)  # points' earn preview
        assert earn and int(earn.group(1)) > 0 and earn.group(1) == earn.group(2)
        csrf = _csrf(product.text)
        forged = await browser.post("/cart/items", data={"product_id": mug, "quantity": 1, "csrf_token": "f" * 64})
        assert forged.status_code == 403 and (await w.api.ok("GET", "/api/cart", buyer))["items"] == []
        bad = await _post(browser, "/cart/items", {"product_id": mug, "quantity": 0}, csrf)
        assert "Quantity must be at least 1" in bad.text and 'data-flash="error"' in bad.text
        cart = await _post(browser, "/cart/items", {"product_id": mug, "quantity": 2}, csrf)
        assert "Titanium mug" in cart.text and "¥7,800" in cart.text
        checkout = await browser.get("/checkout", params={"merchant_id": merchant})
        assert 'max="700"' in checkout.text and "You have 700 points" in checkout.text
        key = re.search(r'name="idempotency_key" value="(\w+)"', checkout.text)
        assert key
        too_many = await _post(
            browser, "/checkout", {"merchant_id": merchant, "points": 701, "idempotency_key": uuid.uuid4().hex}, csrf
        )
        assert "You asked to use 701 pt, but you have 700 pt." in too_many.text
        assert 'data-flash="error"' in too_many.text and "exceed" not in too_many.text
        assert "You asked to use" not in (await browser.get("/checkout", params={"merchant_id": merchant})).text
        placed = await _post(
            browser, "/checkout", {"merchant_id": merchant, "points": 500, "idempotency_key": key.group(1)}, csrf
        )
        assert "is placed" in placed.text and "500 points" in placed.text and "¥7,300 on the card" in placed.text
        assert ((b := await w.balance(buyer)).total, b.pending) == (200, 500)
        assert (await w.card(buyer))["held_minor"] == 7_300
        order = re.search(r'data-order="(ord_\w+)"', placed.text)
        assert order
        order_id = order.group(1)
        # The merchant ships from the console; the member confirms delivery and asks for a refund.
        console = await shopkeeper.get("/merchant")
        row = _order_row(console.text, order_id)
        assert "¥390" in row  # 5% commission on ¥7,800
        # The campaign's 78 points are the merchant's cost: the payout is ¥7,800 - ¥390 - ¥78.
        assert "¥78 (78 pt)" in row and "<td data-payout>¥7,332</td>" in row
        ship_by = datetime.fromisoformat((await w.api.ok("GET", f"/api/orders/{order_id}", buyer))["ship_by"])
        assert f"{ship_by:%Y-%m-%d %H:%M} UTC" in row
        shipped = await _post(
            shopkeeper, f"/merchant/{merchant}/orders/{order_id}/ship", {"tracking": "JP42"}, _csrf(console.text)
        )
        assert f"Order {order_id} is shipped" in shipped.text
        assert (await w.card(buyer))["owed_minor"] == 7_300
        confirmed = await _post(browser, f"/orders/{order_id}/confirm", {}, csrf)
        assert "Thanks for confirming" in confirmed.text and "completed" in confirmed.text
        asked = await _post(browser, f"/orders/{order_id}/refund-request", {"reason": "Dented lid"}, csrf)
        assert "Refund requested: Dented lid" in asked.text
        console = await shopkeeper.get("/merchant")
        assert "refund requested: Dented lid" in console.text
        refunded = await _post(shopkeeper, f"/merchant/{merchant}/orders/{order_id}/refund", {}, _csrf(console.text))
        assert f"Order {order_id} is refunded" in refunded.text
        await wait_until(lambda: _card_owes(w, buyer, 0))
        # Another member's order cannot be touched from their pages.
        intruder = await _post(shopkeeper, f"/orders/{order_id}/cancel", {}, _csrf(console.text))
        assert "belongs to another member" in intruder.text


def _order_row(page: str, order_id: str) -> str:
    match = re.search(rf'<tr data-order="{order_id}">(.*?)</tr>', page, re.DOTALL)
    assert match, f"the page lists no order {order_id}"
    return match.group(1)


async def _card_owes(w: ShopWorld, member: str, owed: int) -> bool:
    return bool((await w.card(member))["owed_minor"] == owed)


async def test_cancel_from_my_orders_and_admin_verification(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=100)
    async with (
        await _browser(w, OWNER, "Ken") as shopkeeper,
        await _browser(w, ADMIN, "Admin") as admin,
        await _browser(w, buyer) as browser,
    ):
        console = await shopkeeper.get("/merchant")
        applied = await _post(shopkeeper, "/merchant/apply", {"name": "Akari Books"}, _csrf(console.text))
        assert "Akari Books" in applied.text and "pending" in applied.text
        merchant = re.search(r'data-merchant="(mch_\w+)"', applied.text)
        assert merchant
        mid = merchant.group(1)
        added = await _post(
            shopkeeper,
            f"/merchant/{mid}/products",
            {"title": "A5 notebook", "price_minor": 2750, "stock": 3, "category": "stationery"},
            _csrf(applied.text),
        )
        assert "A5 notebook is on sale" in added.text
        assert "A5 notebook" not in (await browser.get("/")).text  # not verified yet
        # Only an admin sees and uses verification.
        assert (await shopkeeper.get("/admin/merchants")).status_code == 403
        refused = await shopkeeper.post(f"/admin/merchants/{mid}/verify", data={"csrf_token": _csrf(applied.text)})
        assert refused.status_code == 403
        queue = await admin.get("/admin/merchants")
        assert queue.status_code == 200 and "Akari Books" in queue.text
        verified = await _post(admin, f"/admin/merchants/{mid}/verify", {}, _csrf(queue.text))
        assert "Akari Books is active" in verified.text
        home = await browser.get("/")
        assert "A5 notebook" in home.text
        product = re.search(r'href="/products/(prd_\w+)">A5 notebook', home.text)
        assert product
        csrf = _csrf((await browser.get(f"/products/{product.group(1)}")).text)
        await _post(browser, "/cart/items", {"product_id": product.group(1), "quantity": 1}, csrf)
        checkout = await browser.get("/checkout", params={"merchant_id": mid})
        assert 'max="100"' in checkout.text
        placed = await _post(
            browser, "/checkout", {"merchant_id": mid, "points": 100, "idempotency_key": uuid.uuid4().hex}, csrf
        )
        order = re.search(r'data-order="(ord_\w+)"', placed.text)
        assert order
        cancelled = await _post(browser, f"/orders/{order.group(1)}/cancel", {}, csrf)
        assert "is cancelled" in cancelled.text
        assert ((b := await w.balance(buyer)).total, b.pending) == (100, 0)
        assert (await w.card(buyer))["held_minor"] == 0


async def test_privacy_export_then_erasure_keeps_orders_for_the_books(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=0)
    merchant = await w.api.active_merchant(OWNER, name="Sakura Tea")
    tea = await w.api.product(merchant, OWNER, title="Hojicha", price=1200, stock=5)
    await w.api.ok("PUT", "/api/cart/items", buyer, {"product_id": tea, "quantity": 1})
    order = (await w.api.checkout(buyer)).json()["order_id"]
    await w.api.ok("PUT", "/api/cart/items", buyer, {"product_id": tea, "quantity": 2})
    export_path = f"/privacy/members/{buyer}/export"
    identity_token = {"authorization": f"Bearer {w.issuer.service_token('identity', 'privacy:export')}"}
    denied = await w.api.http.get(export_path, headers={"authorization": f"Bearer {w.api.token(buyer)}"})
    assert denied.status_code == 403
    exported = await w.api.http.get(export_path, headers=identity_token)
    assert exported.status_code == 200, exported.text
    data = exported.json()["data"]
    assert [o["id"] for o in data["orders"]] == [order] and data["orders"][0]["lines"][0]["title"] == "Hojicha"
    assert data["cart"] == [{"product_id": tea, "title": "Hojicha", "quantity": 2}]
    assert len(data["checkouts"]) == 1

    requested_at = Timestamp()
    requested_at.FromDatetime(datetime.now(UTC))
    await publish_identity_event(
        w.nats_url,
        "identity.member.erasure_requested",
        identity.MemberErasureRequested(member_id=buyer, requested_at=requested_at),
        buyer,
        f"evt_erase_{buyer}",
    )

    async def erased() -> bool:
        resp = await w.api.http.get(export_path, headers=identity_token)
        d = resp.json()["data"]
        return not d["orders"] and not d["cart"] and not d["checkouts"]

    await wait_until(erased)
    # The merchant's books keep the order and its money, without the member.
    books = await w.api.ok("GET", f"/api/merchants/{merchant}/orders", OWNER)
    assert [(o["id"], o["total"]["amount_minor"]) for o in books] == [(order, 1200)]
    assert books[0]["member_id"].startswith("erased_") and buyer not in str(books)


async def test_merchant_edits_products_over_the_api_and_in_the_console_and_the_page_shows_the_image(
    world: ShopWorld,
) -> None:
    w = world
    merchant = await w.api.active_merchant(OWNER, name="Sakura Tea")
    tea = await w.api.product(merchant, OWNER, title="Sencha", price=1800, stock=4, category="food")
    edit = {
        "title": "Sencha first flush",
        "description": "grassy",
        "price_minor": 2100,
        "currency": "JPY",
        "stock": 9,
        "category": "tea",
        "image_url": "https://images.example/sencha.jpg",
    }
    updated = await w.api.ok("PUT", f"/api/merchants/{merchant}/products/{tea}", OWNER, edit)
    assert (updated["title"], updated["price"]["amount_minor"], updated["stock"], updated["category"]) == (
        "Sencha first flush",
        2100,
        9,
        "tea",
    )
    assert (await w.api.ok("GET", f"/api/products/{tea}"))["image_url"] == "https://images.example/sencha.jpg"
    # Bad input, a stranger, another merchant's product: refused, nothing changes.
    bad = await w.api.call(
        "PUT", f"/api/merchants/{merchant}/products/{tea}", OWNER, {**edit, "image_url": "javascript:alert(1)"}
    )
    assert bad.status_code == 400 and "image_url must be an http(s) URL" in bad.json()["message"]
    stranger = await w.api.call("PUT", f"/api/merchants/{merchant}/products/{tea}", "mbr_stranger", edit)
    assert stranger.status_code == 403
    other = await w.api.active_merchant("mbr_other_owner", name="Other")
    theirs = await w.api.call("PUT", f"/api/merchants/{other}/products/{tea}", "mbr_other_owner", edit)
    assert theirs.status_code == 404
    assert (await w.api.ok("GET", f"/api/products/{tea}"))["price"]["amount_minor"] == 2100
    async with await _browser(w, None) as visitor, await _browser(w, OWNER, "Ken") as shopkeeper:
        page = await visitor.get(f"/products/{tea}")
        assert '<img src="https://images.example/sencha.jpg" alt="Sencha first flush"' in page.text
        assert "¥2,100" in page.text and "9 in stock" in page.text
        # The console's edit form: price, stock, on sale.
        console = await shopkeeper.get("/merchant")
        assert f'action="/merchant/{merchant}/products/{tea}"' in console.text
        saved = await _post(
            shopkeeper,
            f"/merchant/{merchant}/products/{tea}",
            {"price_minor": 2500, "stock": 7, "active": "on"},
            _csrf(console.text),
        )
        assert "The product is updated." in saved.text
        product = await w.api.ok("GET", f"/api/products/{tea}")
        assert (product["price"]["amount_minor"], product["stock"], product["title"]) == (2500, 7, "Sencha first flush")
        assert "¥2,500" in (await visitor.get("/")).text
        refused = await _post(
            shopkeeper,
            f"/merchant/{merchant}/products/{tea}",
            {"price_minor": 0, "stock": 7, "active": "on"},
            _csrf(console.text),
        )
        assert "Price must be a positive integer" in refused.text
        assert (await w.api.ok("GET", f"/api/products/{tea}"))["price"]["amount_minor"] == 2500
        # Unticking "on sale" takes it off the storefront.
        await _post(
            shopkeeper, f"/merchant/{merchant}/products/{tea}", {"price_minor": 2500, "stock": 7}, _csrf(console.text)
        )
        assert "Sencha first flush" not in (await visitor.get("/")).text
        assert (await visitor.get(f"/products/{tea}")).status_code == 404


async def test_the_checkout_promises_exactly_what_the_order_then_earns(world: ShopWorld) -> None:
    from kizuna.points.v1 import points_pb2

    w = world
    buyer = await w.member(points=1000)
    merchant = await w.api.active_merchant(OWNER, name="Kumo Outdoor")
    tent = await w.api.product(merchant, OWNER, title="Dome tent", price=34_800, stock=2)
    async with await _browser(w, buyer) as browser:
        product = await browser.get(f"/products/{tent}")
        tile = re.search(r'data-earn="(\d+)"', product.text)
        assert tile, "the product page shows no earn badge"
        csrf = _csrf(product.text)
        await _post(browser, "/cart/items", {"product_id": tent, "quantity": 1}, csrf)
        # All by card first: the badge's promise. Then 400 points: the card pays ¥34,400, which earns.
        checkout = await browser.get("/checkout", params={"merchant_id": merchant})
        all_by_card = re.search(r'data-earn="(\d+)"', checkout.text)
        assert all_by_card and all_by_card.group(1) == tile.group(1)
        checkout = await browser.get("/checkout", params={"merchant_id": merchant, "points": 400})
        assert 'data-pay-points="400"' in checkout.text and 'data-pay-card="34400"' in checkout.text
        assert "Place order: ¥34,400 on the card" in checkout.text
        earn = re.search(r'data-earn="(\d+)"', checkout.text)
        assert earn, "the checkout shows no earn preview"
        promised = int(earn.group(1))
        assert 0 < promised < int(tile.group(1))
        # More points than the member has are brought back within the balance, never beyond it.
        capped = await browser.get("/checkout", params={"merchant_id": merchant, "points": 99_999})
        assert 'data-pay-points="1000"' in capped.text and 'data-pay-card="33800"' in capped.text
        key = re.search(r'name="idempotency_key" value="(\w+)"', checkout.text)
        assert key
        placed = await _post(
            browser, "/checkout", {"merchant_id": merchant, "points": 400, "idempotency_key": key.group(1)}, csrf
        )
        order = re.search(r'data-order="(ord_\w+)"', placed.text)
        assert order
        order_id = order.group(1)
        # Until it ships, the points are set aside, not spent; then they are spent.
        mine = _section(placed.text, order_id)
        assert 'data-points-state="held"' in mine and "400 pt are set aside for this order" in mine
        assert "¥34,400 is held on your Kizuna card" in mine
        ja = _section((await browser.get("/orders", headers={"accept-language": "ja"})).text, order_id)
        assert "400 ptをこの注文のために取り置いています" in ja
        await w.api.ok("POST", f"/api/merchants/{merchant}/orders/{order_id}/ship", OWNER, {})
        shipped = _section((await browser.get("/orders")).text, order_id)
        assert 'data-points-state="taken"' in shipped and "400 pt spent on this order." in shipped
        assert "¥34,400 charged to your Kizuna card." in shipped
    await w.api.ok("POST", f"/api/orders/{order_id}/confirm-delivery", buyer)

    async def earned() -> int:
        entries = await w.entries(buyer)
        return sum(
            e.amount
            for e in entries
            if e.kind == points_pb2.ENTRY_KIND_CREDIT and e.source_service == "shop" and e.source_ref == order_id
        )

    assert await wait_until(earned, timeout=20) == promised


def _section(page: str, order_id: str) -> str:
    match = re.search(rf'<section class="kz-card" data-order="{order_id}".*?</section>', page, re.DOTALL)
    assert match, f"the page shows no order {order_id}"
    return match.group(0)
