"""`python -m fintech audit`, run the way an operator runs it: it passes on books that balance
and names what is wrong (exit 1) when a balance or an entry no longer adds up. Every other test
in this folder ends with the same audit (the `fintech` fixture)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from asyncio.subprocess import PIPE
from typing import Any

from sqlalchemy import text

from .fintech_world import FintechClient, new_member


async def test_audit_command_passes_on_sound_books_and_names_what_is_broken(
    fintech: FintechClient, database_url: str
) -> None:
    payer, payee = new_member(), new_member()
    await fintech.open_bank(payer, top_up=30_000)
    await fintech.open_bank(payee)
    sent = await fintech.http.post(
        "/api/bank/transfers",
        json={"to_member_id": payee, "amount_minor": 4_000, "idempotency_key": "rent"},
        headers=fintech.member_headers(payer),
    )
    assert sent.status_code == 200, sent.text
    await fintech.apply_card(payer)
    auth = await fintech.authorize(payer, 9_000)
    await fintech.capture(auth.authorization_id)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": "nats://127.0.0.1:1",
        "KIZUNA_ISSUER": "http://127.0.0.1:1",
        "LOG_LEVEL": "ERROR",
    }

    async def run_audit() -> tuple[int, dict[str, Any]]:
        # Run without blocking this loop: the service under test shares it, and on SQLite a
        # transaction it holds open would otherwise keep the audit waiting for the lock.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fintech", "audit", env=env, stdout=PIPE, stderr=PIPE
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert stdout.strip(), f"exit {process.returncode}, no report; stderr:\n{stderr.decode()}"
        return int(process.returncode or 0), json.loads(stdout)

    code, report = await run_audit()
    assert code == 0 and report["ok"] is True, report
    assert report["entries"] == 3 and report["problems"] == []  # top-up, transfer, purchase

    async def tamper(sql: str) -> None:
        async with fintech.ctx.db.transaction() as session:
            await (await session.connection()).execute(text(sql))

    # A balance that no longer equals its postings.
    await tamper(f"UPDATE fintech_account SET balance_minor = balance_minor + 5 WHERE account_id = 'bank:{payee}'")
    code, report = await run_audit()
    assert code == 1 and report["ok"] is False
    assert report["problems"] == [f"bank:{payee} balance is 4005 but its postings sum to 4000"]
    await tamper(f"UPDATE fintech_account SET balance_minor = balance_minor - 5 WHERE account_id = 'bank:{payee}'")

    # An entry whose postings no longer sum to zero (and so a balance that disagrees too).
    await tamper("UPDATE fintech_posting SET amount_minor = amount_minor + 1 WHERE account_id = 'cash'")
    code, report = await run_audit()
    assert code == 1
    assert any("sums to 1, not 0" in problem for problem in report["problems"]), report["problems"]
    assert any(problem.startswith("cash balance is") for problem in report["problems"]), report["problems"]
    await tamper("UPDATE fintech_posting SET amount_minor = amount_minor - 1 WHERE account_id = 'cash'")
    assert (await run_audit())[0] == 0  # put back for the fixture's own audit


async def test_an_audit_of_live_books_sees_one_moment(fintech: FintechClient) -> None:
    """Transfers keep committing while audits run: each audit reads the books at one moment, so
    a transfer between two of its queries never shows as a balance that misses its postings."""
    from fintech import ledger

    members = [new_member() for _ in range(3)]
    for member in members:
        await fintech.open_bank(member, top_up=1_000_000)

    async def transfers() -> None:
        for i in range(60):
            sender, receiver = members[i % 3], members[(i + 1) % 3]
            sent = await fintech.http.post(
                "/api/bank/transfers",
                json={"to_member_id": receiver, "amount_minor": 100 + i, "idempotency_key": f"live-{i}"},
                headers=fintech.member_headers(sender),
            )
            assert sent.status_code == 200, sent.text

    async def audits() -> list[list[str]]:
        found = []
        while not moving.done():
            async with fintech.ctx.db.sessions() as session:
                found.append((await ledger.audit(session)).problems)
        return found

    moving = asyncio.create_task(transfers())
    reports = await audits()
    await moving
    assert reports and all(problems == [] for problems in reports), [p for p in reports if p][:3]
