"""Messages for the member after a form: "Your order is placed", "The card was declined".

A handler calls `flash(request, "success", "...")` and redirects; the next page shows the message
once (the kit layout renders `flashes(request)`), styled by kind. The messages travel in a signed
cookie, never in the URL: a link cannot make a page print text of an attacker's choosing.

`PageMiddleware` (kizuna.kit.web) writes and clears the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import HTTPConnection

Kind = Literal["success", "info", "warning", "error"]
KINDS: tuple[str, ...] = ("success", "info", "warning", "error")
MAX_MESSAGES = 5
MAX_TEXT = 500

_OUTGOING = "kizuna.flash.outgoing"
_CONSUMED = "kizuna.flash.consumed"


@dataclass(frozen=True)
class Flash:
    kind: str
    text: str


def cookie_name(service: str) -> str:
    # Cookies do not isolate ports: each service on one host (local development) has its own.
    return f"kz_flash_{service}" if service else "kz_flash"


def serializer(secret: str | bytes) -> URLSafeSerializer:
    raw = secret.encode() if isinstance(secret, str) else secret
    key = hmac.new(raw, b"kizuna-flash", hashlib.sha256).digest()
    return URLSafeSerializer(key, salt="kz-flash")


def flash(request: HTTPConnection, kind: Kind, text: str) -> None:
    """Queue a message for the member's next page."""
    if kind not in KINDS:
        raise ValueError(f"flash kind must be one of {', '.join(KINDS)}, not {kind!r}")
    outgoing: list[list[str]] = request.scope.setdefault(_OUTGOING, [])
    outgoing.append([kind, text[:MAX_TEXT]])


def decode(value: str | None, secret: str | bytes | None) -> list[Flash]:
    """The messages in a flash cookie; a forged or malformed cookie carries none."""
    if not value or secret is None:
        return []
    try:
        data: Any = serializer(secret).loads(value)
    except BadSignature:
        return []
    if not isinstance(data, list):
        return []
    return [
        Flash(item[0], item[1])
        for item in data[:MAX_MESSAGES]
        if isinstance(item, list) and len(item) == 2 and item[0] in KINDS and isinstance(item[1], str)
    ]


def flashes(request: HTTPConnection) -> list[Flash]:
    """The messages waiting for this page (shown once: the cookie is cleared with this response),
    followed by any queued while rendering it."""
    request.scope[_CONSUMED] = True
    incoming: list[Flash] = request.scope.get("kizuna.flash.incoming", [])
    queued = [Flash(k, t) for k, t in request.scope.get(_OUTGOING, [])]
    request.scope[_OUTGOING] = []
    return [*incoming, *queued]


def outgoing(scope: MutableMapping[str, Any]) -> list[list[str]]:
    return list(scope.get(_OUTGOING, []))


def consumed(scope: MutableMapping[str, Any]) -> bool:
    return bool(scope.get(_CONSUMED))
