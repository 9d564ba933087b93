"""Travel's web pages (filled in below the API)."""

from __future__ import annotations

from fastapi import FastAPI
from kizuna.kit import web


def install(app: FastAPI) -> None:
    app.include_router(web.router)
