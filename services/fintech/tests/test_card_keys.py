"""The card-token key: configured, generated once in the sandbox, required outside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fintech.card_keys import CardTokenKeyMissingError, card_token_key
from fintech.settings import Settings


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings.model_validate(
        {"nats_url": "nats://x", "kizuna_issuer": "http://x", "kizuna_data_dir": tmp_path, **values}
    )


def test_the_sandbox_generates_a_key_once_and_reuses_it(tmp_path: Path) -> None:
    first = card_token_key(_settings(tmp_path))
    assert len(first) >= 32 and card_token_key(_settings(tmp_path)) == first
    assert (tmp_path / "fintech-card-token-key").stat().st_mode & 0o077 == 0


def test_outside_the_sandbox_the_key_is_required(tmp_path: Path) -> None:
    with pytest.raises(CardTokenKeyMissingError, match="CARD_TOKEN_KEY"):
        card_token_key(_settings(tmp_path, fintech_sandbox=False))
    with pytest.raises(CardTokenKeyMissingError, match="at least 32"):
        card_token_key(_settings(tmp_path, fintech_sandbox=False, card_token_key="short"))
    key = "k" * 40
    assert card_token_key(_settings(tmp_path, fintech_sandbox=False, card_token_key=key)) == key
    assert not (tmp_path / "fintech-card-token-key").exists()
