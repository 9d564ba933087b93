"""Merchants apply, an admin verifies them, staff manage products; members browse, search and sort."""

from __future__ import annotations

from typing import Any

from .shop_support import ADMIN, ShopApi


async def test_merchant_is_invisible_until_verified_then_sells(api: ShopApi) -> None:
    merchant = await api.ok("POST", "/api/merchants", "mbr_owner", {"name": "Sakura Tea"})
    assert merchant["status"] == "pending"
    product = await api.product(merchant["id"], "mbr_owner", title="Sencha")
    assert await api.ok("GET", "/api/products") == []
    assert (await api.call("GET", f"/api/products/{product}")).status_code == 404
    # Only a platform admin verifies.
    denied = await api.call("POST", f"/api/admin/merchants/{merchant['id']}/verify", "mbr_owner")
    assert denied.status_code == 403
    pending = await api.ok("GET", "/api/admin/merchants", ADMIN, params={"status": "pending"})
    assert [m["id"] for m in pending] == [merchant["id"]]
    verified = await api.ok("POST", f"/api/admin/merchants/{merchant['id']}/verify", ADMIN)
    assert verified["status"] == "active" and verified["verified_by"] == ADMIN
    assert [p["id"] for p in await api.ok("GET", "/api/products")] == [product]
    # Suspending takes the products off sale again.
    await api.ok("POST", f"/api/admin/merchants/{merchant['id']}/suspend", ADMIN)
    assert await api.ok("GET", "/api/products") == []


async def test_only_staff_manage_products_and_staff_are_member_ids(api: ShopApi) -> None:
    merchant_id = await api.active_merchant("mbr_owner")
    body = {"title": "Tea", "price_minor": 500, "stock": 3, "category": "food"}
    assert (await api.call("POST", f"/api/merchants/{merchant_id}/products", "mbr_stranger", body)).status_code == 403
    await api.ok("POST", f"/api/merchants/{merchant_id}/staff", "mbr_owner", {"member_id": "mbr_clerk"})
    created = await api.ok("POST", f"/api/merchants/{merchant_id}/products", "mbr_clerk", body)
    assert created["price"] == {"amount_minor": 500, "currency": "JPY"}
    mine = await api.ok("GET", "/api/merchants/mine", "mbr_clerk")
    assert [(m["id"], m["role"]) for m in mine] == [(merchant_id, "staff")]


async def test_bad_products_are_refused(api: ShopApi) -> None:
    merchant_id = await api.active_merchant("mbr_owner")
    cases: list[tuple[dict[str, object], str]] = [
        ({"price_minor": 0}, "price"),
        ({"price_minor": -5}, "price"),
        ({"stock": -1}, "stock"),
        ({"title": " "}, "title"),
        ({"currency": "yen"}, "currency"),
        ({"image_url": "javascript:alert(1)"}, "image_url"),
    ]
    for bad, words in cases:
        body = {"title": "Tea", "price_minor": 500, "stock": 3, "category": "food", **bad}
        resp = await api.call("POST", f"/api/merchants/{merchant_id}/products", "mbr_owner", body)
        assert resp.status_code == 400 and words in resp.json()["message"], (bad, resp.text)
    assert await api.ok("GET", "/api/products") == []


async def test_browse_by_category_search_and_sort_by_price(api: ShopApi) -> None:
    m = await api.active_merchant("mbr_owner")
    tea = await api.product(m, "mbr_owner", title="Sencha green tea", price=1800, category="food")
    pot = await api.product(
        m, "mbr_owner", title="Kyusu teapot", price=6800, category="kitchen", description="Clay pot for green TEA"
    )
    pan = await api.product(m, "mbr_owner", title="Skillet", price=5400, category="kitchen")

    def ids(rows: list[dict[str, Any]]) -> list[str]:
        return [r["id"] for r in rows]

    assert ids(await api.ok("GET", "/api/products", params={"category": "kitchen", "sort": "price_asc"})) == [pan, pot]
    assert ids(await api.ok("GET", "/api/products", params={"sort": "price_desc"})) == [pot, pan, tea]
    assert set(ids(await api.ok("GET", "/api/products", params={"q": "green tea"}))) == {tea, pot}
    assert ids(await api.ok("GET", "/api/products", params={"q": "100%_"})) == []
    cats = await api.ok("GET", "/api/categories")
    assert cats == [{"category": "food", "products": 1}, {"category": "kitchen", "products": 2}]
    # A browser whose single-sign-on check is done (else the page first sends it to identity).
    async with await api.browser(None) as browser:
        page = await browser.get("/", params={"q": "skillet"})
        assert page.status_code == 200 and "Skillet" in page.text and "Sencha" not in page.text
        product_page = await browser.get(f"/products/{pot}")
        assert product_page.status_code == 200 and "Kyusu teapot" in product_page.text
