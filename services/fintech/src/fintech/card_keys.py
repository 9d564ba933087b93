"""The key of the hash that stands in for card numbers: CARD_TOKEN_KEY, or in the sandbox (a
local `make up`) a random key generated once into the data dir and reused on every start."""

from __future__ import annotations

import os
import secrets

from fintech.settings import Settings

KEY_FILE = "fintech-card-token-key"
MIN_LENGTH = 32


class CardTokenKeyMissingError(SystemExit):
    """Outside the sandbox the service refuses to start without a real key."""


def card_token_key(settings: Settings) -> str:
    if settings.card_token_key:
        if len(settings.card_token_key) < MIN_LENGTH:
            raise CardTokenKeyMissingError(f"CARD_TOKEN_KEY must be at least {MIN_LENGTH} characters")
        return settings.card_token_key
    if not settings.fintech_sandbox:
        raise CardTokenKeyMissingError(
            "missing required setting CARD_TOKEN_KEY (set the CARD_TOKEN_KEY environment variable; "
            "it is generated only when FINTECH_SANDBOX is on)"
        )
    settings.kizuna_data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.kizuna_data_dir / KEY_FILE
    if not path.exists():
        # Written aside and linked into place, so a concurrent reader never sees a half-written key.
        draft = path.with_name(f"{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    key = path.read_text().strip()
    if len(key) < MIN_LENGTH:
        raise CardTokenKeyMissingError(f"{path} holds no usable card-token key; delete it to generate a new one")
    return key
