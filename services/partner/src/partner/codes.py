"""The member's code at the till: a time-based one-time code (RFC 6238, HMAC-SHA-1) from a
per-card secret, so the member's page can show it even while the phone is offline for a while.

The till scans `KZ1-<card number>-<code>`: the card number says whose card (an opaque number, not
the member ID), the code proves the card is present now. A code is valid for `STEP` seconds and
`WINDOW` steps either side (a few minutes in all) and can be used for one transaction only.
Pure functions: no I/O, no clock of their own (the QR image included).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct

import segno
from markupsafe import Markup

PREFIX = "KZ1"
STEP = 60
WINDOW = 2
DIGITS = 8
_PAYLOAD = re.compile(rf"^{PREFIX}-(\d{{12}})-(\d{{{DIGITS}}})$")


def new_secret() -> bytes:
    return secrets.token_bytes(20)


def new_card_number() -> str:
    return "".join(str(secrets.randbelow(10)) for _ in range(12))


def counter_at(unix_seconds: float) -> int:
    return int(unix_seconds // STEP)


def code_for(secret: bytes, counter: int) -> str:
    """RFC 4226 HOTP of `counter` (RFC 6238 with the time step as counter)."""
    digest = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def payload(card_number: str, secret: bytes, unix_seconds: float) -> str:
    """What the member's page shows (and the till scans) at this moment."""
    return f"{PREFIX}-{card_number}-{code_for(secret, counter_at(unix_seconds))}"


def qr_svg(payload: str) -> Markup:
    """The payload as a QR code (inline SVG, drawn here: no image is fetched), for the till's scanner."""
    svg = segno.make(payload, error="m").svg_inline(scale=5, border=2, omitsize=False)
    return Markup(svg)  # noqa: S704  (segno's SVG of our own payload: digits, letters and dashes only)


def parse(scanned: str) -> tuple[str, str] | None:
    """(card number, code) from a scanned payload, or None when it is not one."""
    match = _PAYLOAD.match(scanned.strip())
    return (match[1], match[2]) if match else None


def matching_counter(secret: bytes, code: str, unix_seconds: float) -> int | None:
    """The time step whose code this is, within the window around now; None if none matches."""
    now = counter_at(unix_seconds)
    for counter in range(now - WINDOW, now + WINDOW + 1):
        if hmac.compare_digest(code_for(secret, counter), code):
            return counter
    return None
