"""The shared page layout: one Jinja2 base template, stylesheet and macros (the design system) with
the ecosystem header (member name, points balance slot, links to every service), so that all
services look like one product. A service's templates `{% extends "kizuna/base.html" %}`, fill
`content`, and `{% import "kizuna/ui.html" as ui %}` for cards, tables, forms, alerts and badges.

    templates = page_templates(Path(__file__).parent / "templates", service="shop")
    app.include_router(web.router)          # serves /_kizuna/kizuna.css, header.js and images

`PageMiddleware` (installed by the kit's Service on every app) adds the browser hardening headers
and carries the flash messages (kizuna.kit.flash) from a form's redirect to the next page.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, cast

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from kizuna.kit import flash as flash_messages
from kizuna.kit import i18n
from kizuna.kit.errors import database_refusal
from starlette.datastructures import MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kizuna.kit.web")

_HERE = Path(__file__).parent
STATIC = _HERE / "static"
STYLESHEET_PATH = "/_kizuna/kizuna.css"
HEADER_SCRIPT_PATH = "/_kizuna/header.js"
IMAGE_PREFIX = "/_kizuna/img/"
_IMAGE_NAME = re.compile(r"^[a-z0-9-]{1,64}\.svg$")

# Pages load only this service's own scripts and styles, are never framed (clickjacking) and do
# not leak their URL (which may carry ids) to other sites. Images may come from https merchants.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-content-type-options": "nosniff",
}
# FastAPI's interactive API docs load their scripts from a CDN: no page CSP there (still unframed).
_DOCS_PATHS = ("/docs", "/redoc")
_SECURITY_HEADERS_RAW = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in SECURITY_HEADERS.items()]
_SECURITY_HEADERS_DOCS = [pair for pair in _SECURITY_HEADERS_RAW if pair[0] != b"content-security-policy"]

router = APIRouter(include_in_schema=False)


def _static(name: str, media_type: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})


@router.get(STYLESHEET_PATH)
async def stylesheet() -> FileResponse:
    return _static("kizuna.css", "text/css")


@router.get(HEADER_SCRIPT_PATH)
async def header_script() -> FileResponse:
    return _static("header.js", "text/javascript")


@router.get("/_kizuna/forms.js")
async def forms_script() -> FileResponse:
    return _static("forms.js", "text/javascript")


@router.get(IMAGE_PREFIX + "{name}")
async def image(name: str) -> FileResponse:
    """The illustrations shipped with the kit (no image is fetched from another site)."""
    if not _IMAGE_NAME.match(name) or not (STATIC / "img" / name).is_file():
        raise HTTPException(404, "no such image")
    return FileResponse(
        STATIC / "img" / name, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"}
    )


@router.get("/_kizuna/lang/{code}")
async def switch_language(code: str, request: Request) -> RedirectResponse:
    """The header's language switch: remember the choice (a cookie every service reads), go back."""
    if code not in i18n.SUPPORTED:
        raise HTTPException(404, "no such language")
    target = request.query_params.get("next", "/")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        i18n.COOKIE,
        code,
        max_age=365 * 24 * 3600,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


def _language_context(request: Request) -> dict[str, Any]:
    lang = i18n.language()
    other = "en" if lang == "ja" else "ja"
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return {"lang": lang, "other_lang": other, "other_lang_name": i18n.NAMES[other], "here": here}


def service_links() -> list[dict[str, str]]:
    """Links to every service for the header: `KIZUNA_LINKS` = JSON {"shop": "https://...", ...},
    labelled from `KIZUNA_LABELS` = JSON {"shop": "Shop", ...} when given."""
    raw = os.environ.get("KIZUNA_LINKS", "")
    if not raw:
        return []
    links: dict[str, str] = json.loads(raw)
    labels: dict[str, str] = json.loads(os.environ.get("KIZUNA_LABELS", "") or "{}")
    return [{"name": name, "url": url, "label": labels.get(name, name.capitalize())} for name, url in links.items()]


# ---- formatting -----------------------------------------------------------------------------------

_SYMBOLS = {"JPY": "¥", "USD": "$", "EUR": "€", "GBP": "£"}
_MINOR_DIGITS = {"JPY": 0}


def format_money(minor: int, currency: str = "JPY") -> str:
    """`¥17,536`, `-¥17,536`; other currencies with their minor units (`$12.50`, `12.50 CHF`)."""
    sign = "-" if minor < 0 else ""
    digits = _MINOR_DIGITS.get(currency, 2)
    amount = abs(int(minor))
    text = f"{amount:,}" if digits == 0 else f"{amount // 10**digits:,}.{amount % 10**digits:0{digits}d}"
    symbol = _SYMBOLS.get(currency)
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency}"


def format_points(points: int, signed: bool = False) -> str:
    """`1,200 pt`; signed: `+1,200 pt` / `-300 pt`."""
    sign = ("+" if points > 0 else "-" if points < 0 else "") if signed else ("-" if points < 0 else "")
    return f"{sign}{abs(int(points)):,} pt"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_date(value: date | datetime | str | None, lang: str = "en") -> str:
    """A date as people read it: `6 Dec 2026` (en), `2026年12月6日` (ja)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = date.fromisoformat(value[:10])
    if lang == "ja":
        return f"{value.year}年{value.month}月{value.day}日"
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def format_datetime(value: datetime | None, lang: str = "en") -> str:
    """`6 Dec 2026, 14:05 UTC` (en), `2026年12月6日 14:05 UTC` (ja)."""
    if value is None:
        return ""
    sep = " " if lang == "ja" else ", "
    return f"{format_date(value, lang)}{sep}{value:%H:%M} UTC"


def page_templates(*directories: Path, service: str = "", **globals_: Any) -> Jinja2Templates:
    """Jinja2 templates for a service: its own directories first, then the kit's layout."""
    env = Environment(
        loader=ChoiceLoader(
            [FileSystemLoader([str(d) for d in directories]), FileSystemLoader(str(_HERE / "templates"))]
        ),
        autoescape=select_autoescape(default=True),
        extensions=["jinja2.ext.i18n"],
    )
    # The i18n extension adds install_gettext_callables to the environment at run time.
    cast(Any, env).install_gettext_callables(i18n.gettext, i18n.ngettext, newstyle=True)
    for directory in directories:
        # A service's catalogues sit beside its templates: <package>/locale/<lang>.po.
        for candidate in (directory / "locale", directory.parent / "locale"):
            i18n.load(candidate)
    from kizuna.kit.csrf import csrf_field, csrf_token
    from kizuna.kit.web.wording import for_member, line_for_member

    env.filters.update(
        money=format_money,
        points=format_points,
        date=format_date,
        datetime=format_datetime,
        plain=line_for_member,
        plain_error=for_member,
    )
    env.globals.update(
        stylesheet=STYLESHEET_PATH,
        header_script=HEADER_SCRIPT_PATH,
        forms_script="/_kizuna/forms.js",
        image_prefix=IMAGE_PREFIX,
        service=service,
        service_links=service_links(),
        csrf_field=csrf_field,
        csrf_value=csrf_token,
        # Text that comes from data (a status, a label, a domain message): looked up in the
        # catalogue as it is, never used as a format string.
        tr=i18n.gettext,
        flashes=flash_messages.flashes,
        money=format_money,
        **globals_,
    )
    return Jinja2Templates(env=env, context_processors=[_language_context])


async def sign_in_unavailable(request: Request, exc: Exception) -> Response:
    """The page a member sees when identity cannot be reached during sign-in (503, Retry-After)."""
    return _unavailable_page(
        request,
        i18n.gettext("Sign-in is not available right now"),
        i18n.gettext("We could not reach Kizuna's sign-in service. Nothing was changed. Please try again in a moment."),
        retry_url="/",
        retry_after=5,
    )


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """A database that refuses connections (`kizuna.kit.errors.database_refusal`): 503 with
    Retry-After, as a page in plain words for a browser and as the kit's JSON error for an API,
    logged once with the cause. Any other error goes on to be the 500 it was."""
    refusal = database_refusal(exc)
    if refusal is None:
        raise exc
    log.warning(
        "%s %s answered 503: the database refused a connection (%s)", request.method, request.url.path, refusal.cause
    )
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse(
            {"error": refusal.code, "message": refusal.message},
            status_code=refusal.http_status,
            headers={**refusal.headers, "Cache-Control": "no-store"},
        )
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _unavailable_page(
        request,
        i18n.gettext("This page is not available right now"),
        i18n.gettext("Kizuna is very busy at the moment. Nothing was changed. Please try again in a few seconds."),
        # A form is not sent again by a link: after a POST, the member starts again from the top.
        retry_url=here if request.method == "GET" else "/",
        retry_after=refusal.retry_after_seconds,
    )


def _unavailable_page(request: Request, title: str, message: str, *, retry_url: str, retry_after: int) -> Response:
    return page_templates().TemplateResponse(
        request,
        "kizuna/unavailable.html",
        {"title": title, "message": message, "retry_url": retry_url},
        status_code=503,
        headers={"Retry-After": str(retry_after), "Cache-Control": "no-store"},
    )


# ---- middleware -----------------------------------------------------------------------------------


def _flash_secret(scope: Scope) -> str | bytes | None:
    app = scope.get("app")
    runtime = getattr(getattr(app, "state", None), "runtime", None)
    state: dict[str, Any] = getattr(runtime, "state", None) or {}
    secret = state.get("flash_secret")
    if isinstance(secret, str | bytes) and secret:
        return secret
    rp = state.get("web_sign_in")
    fallback = getattr(rp, "client_secret", None)
    return fallback if isinstance(fallback, str | bytes) else None


class PageMiddleware:
    """Browser hardening headers on every response; flash messages in and out of their cookie."""

    def __init__(self, app: ASGIApp, service: str = "") -> None:
        self.app = app
        self.cookie = flash_messages.cookie_name(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The two request headers read here, found in one pass over the raw list (every request
        # passes here, the busiest API calls included).
        cookie_header = accept_language = None
        for name, value in scope["headers"]:
            if name == b"cookie" and cookie_header is None:
                cookie_header = value.decode("latin-1")
            elif name == b"accept-language" and accept_language is None:
                accept_language = value.decode("latin-1")
        cookies = cookie_parser(cookie_header) if cookie_header else {}
        i18n.set_language(i18n.negotiate(cookies.get(i18n.COOKIE), accept_language))
        raw = cookies.get(self.cookie)
        if raw:
            scope["kizuna.flash.incoming"] = flash_messages.decode(raw, _flash_secret(scope))
        path: str = scope.get("path", "")
        security = _SECURITY_HEADERS_DOCS if path.startswith(_DOCS_PATHS) else _SECURITY_HEADERS_RAW

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(pair for pair in security if pair[0] not in present)
                message["headers"] = headers
                self._flash_cookie(scope, MutableHeaders(scope=message), bool(raw))
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _flash_cookie(self, scope: Scope, headers: MutableHeaders, had_cookie: bool) -> None:
        new = flash_messages.outgoing(scope)
        consumed = flash_messages.consumed(scope)
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        if new:
            secret = _flash_secret(scope)
            if secret is None:
                return
            kept = [] if consumed else flash_messages.unshown(scope)
            value = flash_messages.serializer(secret).dumps((kept + new)[-flash_messages.MAX_MESSAGES :])
            headers.append("set-cookie", f"{self.cookie}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age=300{secure}")
        elif consumed and had_cookie:
            headers.append("set-cookie", f"{self.cookie}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}")
