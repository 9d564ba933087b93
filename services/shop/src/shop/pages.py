"""Web pages in the kit layout: storefront (browse by category, search, sort by price), product pages.

The signed-in pages (cart, checkout, my orders, merchant console, admin verification) need the kit's
OIDC sign-in (`kizuna.kit.oidc_client`, not in the kit yet); until then members use the JSON API
under /api with their bearer token.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from kizuna.kit import web
from kizuna.kit.db import SessionDep

from shop import catalogue
from shop.catalogue import Sort

templates = web.page_templates(Path(__file__).parent / "templates", service="shop")
router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def storefront(request: Request, session: SessionDep, category: str | None = None, q: str | None = None,
                     sort: Sort = "newest") -> HTMLResponse:
    products = await catalogue.browse(session, category=category, text=q, sort=sort)
    return templates.TemplateResponse(request, "storefront.html", {
        "title": "Shop", "products": products, "categories": await catalogue.categories(session),
        "category": category or "", "q": q or "", "sort": sort})


@router.get("/products/{product_id}", response_class=HTMLResponse)
async def product(product_id: str, request: Request, session: SessionDep) -> HTMLResponse:
    item, merchant = await catalogue.product_page(session, product_id)
    return templates.TemplateResponse(request, "product.html", {"title": item.title, "p": item, "m": merchant})


def mount(app: FastAPI) -> None:
    app.include_router(web.router)
    app.include_router(router)
