"""Bank accounts over real HTTP: top-up, transfers (atomic, idempotent, never negative), bad input."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from .fintech_world import FintechClient, new_member


async def _transfer(
    fintech: FintechClient, sender: str, to: str, amount: int, key: str | None = None, currency: str = "JPY"
) -> tuple[int, dict[str, Any]]:
    resp = await fintech.http.post(
        "/api/bank/transfers",
        json={
            "to_member_id": to,
            "amount_minor": amount,
            "currency": currency,
            "idempotency_key": key or uuid.uuid4().hex,
        },
        headers=fintech.member_headers(sender),
    )
    return resp.status_code, resp.json()


async def test_transfer_moves_money_and_history_shows_it(fintech: FintechClient) -> None:
    alice, bob = new_member(), new_member()
    await fintech.open_bank(alice, top_up=10_000)
    await fintech.open_bank(bob)
    status, body = await _transfer(fintech, alice, bob, 2_500)
    assert status == 200 and body["balance_minor"] == 7_500
    assert await fintech.bank_balance(bob) == 2_500
    history = (await fintech.http.get("/api/bank", headers=fintech.member_headers(alice))).json()["history"]
    assert [(h["kind"], h["amount_minor"]) for h in history] == [("bank_transfer", -2_500), ("bank_top_up", 10_000)]


async def test_concurrent_transfers_never_overdraw_and_never_lose_money(fintech: FintechClient) -> None:
    members = [new_member() for _ in range(4)]
    for m in members:
        await fintech.open_bank(m, top_up=5_000)
    rng = random.Random(7)
    moves = [(a, b, rng.randint(500, 3_000)) for _ in range(40) for a, b in [rng.sample(members, 2)]]
    results = await asyncio.gather(*(_transfer(fintech, a, b, amount) for a, b, amount in moves))
    assert {status for status, _ in results} <= {200, 409}
    assert any(status == 409 for status, _ in results), "the test must push some accounts to their limit"
    refused = [body for status, body in results if status == 409]
    assert all("insufficient funds" in body["message"] for body in refused)
    balances = [await fintech.bank_balance(m) for m in members]
    assert all(b >= 0 for b in balances)
    assert sum(balances) == 20_000
    # Each balance is exactly its top-up plus what the accepted transfers moved.
    expected = dict.fromkeys(members, 5_000)
    for (a, b, amount), (status, _) in zip(moves, results, strict=True):
        if status == 200:
            expected[a] -= amount
            expected[b] += amount
    assert balances == [expected[m] for m in members]


async def test_transfer_retry_with_same_key_moves_money_once(fintech: FintechClient) -> None:
    alice, bob = new_member(), new_member()
    await fintech.open_bank(alice, top_up=10_000)
    await fintech.open_bank(bob)
    results = await asyncio.gather(*(_transfer(fintech, alice, bob, 1_000, key="rent-2026-11") for _ in range(5)))
    assert {status for status, _ in results} == {200}
    assert len({body["transfer_id"] for _, body in results}) == 1
    assert await fintech.bank_balance(alice) == 9_000 and await fintech.bank_balance(bob) == 1_000
    status, body = await _transfer(fintech, alice, bob, 2_000, key="rent-2026-11")
    assert status == 409 and body["error"] == "already_exists"
    assert await fintech.bank_balance(alice) == 9_000


@pytest.mark.parametrize(
    "amount, currency, to, expected",
    [
        (0, "JPY", "bob", 400),
        (-100, "JPY", "bob", 400),
        (100, "USD", "bob", 400),
        (100, "JPY", "unknown", 404),
        (100, "JPY", "self", 400),
        (999_999, "JPY", "bob", 409),
    ],
    ids=["zero", "negative", "currency-mismatch", "unknown-member", "to-self", "overdraw"],
)
async def test_bad_transfers_get_a_clear_error_and_change_nothing(
    fintech: FintechClient, amount: int, currency: str, to: str, expected: int
) -> None:
    alice, bob = new_member(), new_member()
    await fintech.open_bank(alice, top_up=1_000)
    await fintech.open_bank(bob)
    target = {"bob": bob, "unknown": new_member(), "self": alice}[to]
    status, body = await _transfer(fintech, alice, target, amount, currency=currency)
    assert status == expected and body["message"]
    assert await fintech.bank_balance(alice) == 1_000 and await fintech.bank_balance(bob) == 0
