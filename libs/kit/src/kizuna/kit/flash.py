"""Messages for the member after a form: "Your order is placed", "The card was declined".

A handler calls `flash(request, "success", "Order %(order)s is %(status)s.", order=..., status=Word(...))`
and redirects; the next page shows the message once (the kit layout renders `flashes(request)`),
styled by kind. The message is kept as its catalogue key and parameters and translated when it is
shown, so a member who switches language before the next page reads it in the new language. The
messages travel in a signed cookie, never in the URL: a link cannot make a page print text of an
attacker's choosing.

`PageMiddleware` (kizuna.kit.web) writes and clears the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

from itsdangerous import BadSignature, URLSafeSerializer
from kizuna.kit import i18n
from starlette.requests import HTTPConnection

Kind = Literal["success", "info", "warning", "error"]
KINDS: tuple[str, ...] = ("success", "info", "warning", "error")
MAX_MESSAGES = 5
MAX_TEXT = 500

_OUTGOING = "kizuna.flash.outgoing"
_INCOMING = "kizuna.flash.incoming"
_CONSUMED = "kizuna.flash.consumed"


class Word(str):
    """A parameter that is itself a catalogue key (a status, a label): translated with the message."""


Param = str | int
_PARAM_TYPES = (str, int)


@dataclass(frozen=True)
class Flash:
    """A message: `text` is its catalogue key (or a text already in the member's words), `params`
    fill its `%(name)s` places; `words` names the params that are catalogue keys themselves."""

    kind: str
    text: str
    params: dict[str, Param] = field(default_factory=dict)
    words: tuple[str, ...] = ()

    def stored(self) -> list[Any]:
        """The message as its cookie carries it (without params, as older cookies did)."""
        if not self.params:
            return [self.kind, self.text]
        return [self.kind, self.text, self.params, list(self.words)]

    def shown(self) -> Flash:
        """The message in the request's language."""
        if not self.params:
            return Flash(self.kind, i18n.gettext(self.text)[:MAX_TEXT])
        values = {k: i18n.gettext(str(v)) if k in self.words else v for k, v in self.params.items()}
        for text in (i18n.gettext(self.text), self.text):  # a translation whose places differ: English
            if _fits(text, values):
                return Flash(self.kind, (text % values)[:MAX_TEXT])
        return Flash(self.kind, self.text[:MAX_TEXT])

    @classmethod
    def of(cls, item: Any) -> Flash | None:
        """A message from its stored form, or None when it is not one."""
        if not isinstance(item, list) or len(item) not in (2, 4) or item[0] not in KINDS:
            return None
        if not isinstance(item[1], str):
            return None
        if len(item) == 2:
            return cls(item[0], item[1])
        params, words = item[2], item[3]
        if not isinstance(params, dict) or not isinstance(words, list):
            return None
        if not all(isinstance(k, str) and isinstance(v, _PARAM_TYPES) for k, v in params.items()):
            return None
        if not all(isinstance(w, str) and w in params for w in words):
            return None
        return cls(item[0], item[1], params, tuple(words))


def _fits(text: str, params: dict[str, Param]) -> bool:
    try:
        text % params
    except (KeyError, TypeError, ValueError):
        return False
    return True


def cookie_name(service: str) -> str:
    # Cookies do not isolate ports: each service on one host (local development) has its own.
    return f"kz_flash_{service}" if service else "kz_flash"


def serializer(secret: str | bytes) -> URLSafeSerializer:
    raw = secret.encode() if isinstance(secret, str) else secret
    key = hmac.new(raw, b"kizuna-flash", hashlib.sha256).digest()
    return URLSafeSerializer(key, salt="kz-flash")


def flash(request: HTTPConnection, kind: Kind, text: str, **params: Param) -> None:
    """Queue a message for the member's next page: `text` is the catalogue key (the English
    source), `params` fill its `%(name)s` places (a `Word` is translated too). Translated when
    shown, in the language of that page. A text already translated is shown as it is."""
    if kind not in KINDS:
        raise ValueError(f"flash kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if params and not _fits(text, params):
        raise ValueError(f"flash text {text!r} does not take the parameters {sorted(params)}")
    words = tuple(name for name, value in params.items() if isinstance(value, Word))
    plain = {name: str(value) if isinstance(value, str) else value for name, value in params.items()}
    outgoing: list[Flash] = request.scope.setdefault(_OUTGOING, [])
    outgoing.append(Flash(kind, text[:MAX_TEXT], plain, words))


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
    return [message for message in map(Flash.of, data[:MAX_MESSAGES]) if message is not None]


def flashes(request: HTTPConnection) -> list[Flash]:
    """The messages waiting for this page (shown once: the cookie is cleared with this response),
    followed by any queued while rendering it, in this page's language."""
    request.scope[_CONSUMED] = True
    incoming: list[Flash] = request.scope.get(_INCOMING, [])
    queued: list[Flash] = request.scope.get(_OUTGOING, [])
    request.scope[_OUTGOING] = []
    return [message.shown() for message in (*incoming, *queued)]


def outgoing(scope: MutableMapping[str, Any]) -> list[list[Any]]:
    """The messages queued by this request, as the cookie stores them."""
    return [message.stored() for message in scope.get(_OUTGOING, [])]


def unshown(scope: MutableMapping[str, Any]) -> list[list[Any]]:
    """The messages this request received and did not show, as the cookie stores them."""
    return [message.stored() for message in scope.get(_INCOMING, [])]


def consumed(scope: MutableMapping[str, Any]) -> bool:
    return bool(scope.get(_CONSUMED))
