"""Funds over real HTTP: catalogue with a daily price, buying with bank cash, holdings, selling."""

from __future__ import annotations

import uuid

from .conftest import FintechClient, new_member


async def test_buy_value_and_sell_a_fund(fintech: FintechClient) -> None:
    member = new_member()
    headers = fintech.member_headers(member)
    await fintech.open_bank(member, top_up=100_000)
    catalogue = (await fintech.http.get("/api/funds")).json()
    assert {f["fund_id"] for f in catalogue} >= {"kzn-world-equity", "kzn-global-bond"}
    fund = next(f for f in catalogue if f["fund_id"] == "kzn-world-equity")
    assert isinstance(fund["price_minor"], int) and fund["price_minor"] > 0

    bought = await fintech.http.post(
        "/api/funds/kzn-world-equity/buy", json={"bank_minor": 50_000, "idempotency_key": "buy-1"}, headers=headers
    )
    assert bought.status_code == 200, bought.text
    assert bought.json()["status"] == "completed"
    again = await fintech.http.post(
        "/api/funds/kzn-world-equity/buy", json={"bank_minor": 50_000, "idempotency_key": "buy-1"}, headers=headers
    )
    assert again.json()["payment_id"] == bought.json()["payment_id"]
    assert await fintech.bank_balance(member) == 50_000

    held = (await fintech.http.get("/api/holdings", headers=headers)).json()
    [holding] = held["holdings"]
    assert holding["units_micro"] == 50_000 * 1_000_000 // fund["price_minor"]
    assert holding["cost_minor"] == 50_000 and 49_990 <= holding["value_minor"] <= 50_000

    half = holding["units_micro"] // 2
    sold = await fintech.http.post(
        "/api/funds/kzn-world-equity/sell", json={"units_micro": half, "idempotency_key": "sell-1"}, headers=headers
    )
    assert sold.status_code == 200, sold.text
    assert await fintech.bank_balance(member) == 50_000 + sold.json()["proceeds_minor"]
    left = (await fintech.http.get("/api/holdings", headers=headers)).json()["holdings"][0]
    assert left["units_micro"] == holding["units_micro"] - half


async def test_bad_fund_orders_change_nothing(fintech: FintechClient) -> None:
    member = new_member()
    headers = fintech.member_headers(member)
    await fintech.open_bank(member, top_up=10_000)
    cases = [
        ("/api/funds/kzn-world-equity/buy", {"bank_minor": 20_000}, 409),  # more than the bank holds
        ("/api/funds/kzn-world-equity/buy", {"bank_minor": -5}, 400),
        ("/api/funds/kzn-world-equity/buy", {"bank_minor": 0, "points": 0}, 400),
        ("/api/funds/no-such-fund/buy", {"bank_minor": 1_000}, 404),
        ("/api/funds/kzn-world-equity/sell", {"units_micro": 1_000}, 409),  # nothing held
        ("/api/funds/kzn-world-equity/sell", {"units_micro": -1}, 400),
    ]
    for path, body, status in cases:
        resp = await fintech.http.post(path, json={**body, "idempotency_key": uuid.uuid4().hex}, headers=headers)
        assert resp.status_code == status, (path, body, resp.text)
        assert resp.json()["message"]
    assert await fintech.bank_balance(member) == 10_000
    assert (await fintech.http.get("/api/holdings", headers=headers)).json()["holdings"] == []
