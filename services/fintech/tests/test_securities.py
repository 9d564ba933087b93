"""Funds over real HTTP: catalogue with a daily price, buying with bank cash, holdings, selling at a
gain or a loss (and how the books keep them)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta

import pytest
from fintech import ledger, securities
from kizuna.kit.clock import FrozenClock

from .fintech_world import FintechClient, new_member


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


def days_with_a_price_move(fund_id: str, rising: bool) -> tuple[date, date]:
    """Two consecutive days on which the fund's (deterministic) daily price rises, or falls."""
    fund = next(f for f in securities.SEED_FUNDS if f.fund_id == fund_id)
    day = date(datetime.now(UTC).year + 1, 6, 1)
    while True:
        before, after = securities.price_on(fund, day), securities.price_on(fund, day + timedelta(days=1))
        if (after > before) if rising else (after < before):
            return day, day + timedelta(days=1)
        day += timedelta(days=1)


@pytest.mark.parametrize("rising", [True, False], ids=["gain", "loss"])
async def test_a_sale_books_the_gain_or_loss_and_the_fund_stays_at_cost(fintech: FintechClient, rising: bool) -> None:
    member = new_member()
    headers = fintech.member_headers(member)
    bought_on, sold_on = days_with_a_price_move("kzn-world-equity", rising)
    clock = FrozenClock(datetime.combine(bought_on, time(10), UTC))
    fintech.runtime.clock = clock
    await fintech.open_bank(member, top_up=60_000)
    bought = await fintech.http.post(
        "/api/funds/kzn-world-equity/buy", json={"bank_minor": 50_000, "idempotency_key": "buy"}, headers=headers
    )
    assert bought.status_code == 200 and bought.json()["status"] == "completed", bought.text

    clock.set(datetime.combine(sold_on, time(10), UTC))
    [holding] = (await fintech.http.get("/api/holdings", headers=headers)).json()["holdings"]
    assert holding["cost_minor"] == 50_000 and (holding["gain_minor"] > 0) is rising
    sold = await fintech.http.post(
        "/api/funds/kzn-world-equity/sell",
        json={"units_micro": holding["units_micro"], "idempotency_key": "sell"},
        headers=headers,
    )
    assert sold.status_code == 200, sold.text
    sale = sold.json()
    assert sale["proceeds_minor"] == holding["value_minor"]
    assert (
        sale["realized_gain_minor"] == holding["value_minor"] - 50_000 and (sale["realized_gain_minor"] > 0) is rising
    )
    assert await fintech.bank_balance(member) == 10_000 + sale["proceeds_minor"]

    # In the books: nothing is left invested in the fund (no units held), and the gain or loss
    # sits in its own account instead of pushing the fund's account past zero.
    async with fintech.ctx.db.sessions() as session:
        assert await ledger.balance(session, ledger.fund_account("kzn-world-equity")) == 0
        assert await ledger.balance(session, ledger.realized_account("kzn-world-equity")) == sale["realized_gain_minor"]
    async with fintech.ctx.db.sessions() as session:
        report = await ledger.audit(session)
    assert report.ok, report.problems
