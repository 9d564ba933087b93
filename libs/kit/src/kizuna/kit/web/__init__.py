"""The shared page layout: one Jinja2 base template and stylesheet with the ecosystem header
(member name, points balance slot, links to every service), so that all services look like one
product. A service's templates `{% extends "kizuna/base.html" %}` and fill `content`.

    templates = page_templates(Path(__file__).parent / "templates")
    app.include_router(web.router)          # serves /_kizuna/kizuna.css and /_kizuna/header.js
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

_HERE = Path(__file__).parent
STYLESHEET_PATH = "/_kizuna/kizuna.css"
HEADER_SCRIPT_PATH = "/_kizuna/header.js"

router = APIRouter(include_in_schema=False)


@router.get(STYLESHEET_PATH)
async def stylesheet() -> FileResponse:
    return FileResponse(
        _HERE / "static" / "kizuna.css", media_type="text/css", headers={"Cache-Control": "public, max-age=3600"}
    )


@router.get(HEADER_SCRIPT_PATH)
async def header_script() -> FileResponse:
    return FileResponse(
        _HERE / "static" / "header.js", media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"}
    )


def service_links() -> list[dict[str, str]]:
    """Links to every service for the header: `KIZUNA_LINKS` = JSON {"shop": "https://...", ...}."""
    raw = os.environ.get("KIZUNA_LINKS", "")
    if not raw:
        return []
    links: dict[str, str] = json.loads(raw)
    return [{"name": name, "url": url} for name, url in links.items()]


def page_templates(*directories: Path, service: str = "", **globals_: Any) -> Jinja2Templates:
    """Jinja2 templates for a service: its own directories first, then the kit's layout."""
    env = Environment(
        loader=ChoiceLoader(
            [FileSystemLoader([str(d) for d in directories]), FileSystemLoader(str(_HERE / "templates"))]
        ),
        autoescape=select_autoescape(default=True),
    )
    from kizuna.kit.csrf import csrf_field

    env.globals.update(
        stylesheet=STYLESHEET_PATH,
        header_script=HEADER_SCRIPT_PATH,
        service=service,
        service_links=service_links(),
        csrf_field=csrf_field,
        **globals_,
    )
    return Jinja2Templates(env=env)
