"""The wallet page on the kit (sign-in session, ecosystem header), the header's live balance, and
the admin reports and audit CLI with their authorization (scope points:admin)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from kizuna.common.v1 import common_pb2
from kizuna.kit.oidc_client import WebSession, WebSignIn
from kizuna.kit.testing import free_port
from kizuna.points.v1 import points_pb2 as pb
from sqlalchemy import text

from .pointskit import Points, key


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # The header reads the balance from PointsService, i.e. from this very service.
    port = free_port()
    return {"grpc_port": port, "points_addr": f"127.0.0.1:{port}"}


def http(points: Points) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{points.runtime.http_port}", timeout=30)


async def browser(points: Points, member: str | None, name: str = "Hana") -> httpx.AsyncClient:
    """A browser signed in as `member` through the kit's OIDC client (its session row and cookie,
    as /auth/callback leaves them); None: anonymous, single sign-on already checked."""
    rp: WebSignIn = points.runtime.state["web_sign_in"]
    client = http(points)
    client.cookies.set(rp.sso_checked_cookie, "1")
    if member is not None:
        now = datetime.now(UTC)
        row = WebSession(
            id=uuid.uuid4().hex,
            member_id=member,
            display_name=name,
            sid=f"sid-{member}",
            id_token="unused",
            access_token=points.issuer.member_token(member, scope="points:read"),
            refresh_token=None,
            access_expires_at=now + timedelta(minutes=5),
            created_at=now,
            expires_at=now + timedelta(hours=1),
        )
        async with points.runtime.db.transaction() as session:
            session.add(row)
        client.cookies.set(rp.session_cookie, rp._session_signer.dumps(row.id))
    return client


async def earn(points: Points, member: str, service: str, yen: int, ref: str) -> pb.EarnResponse:
    request = pb.EarnRequest(
        member_id=member,
        purchase=common_pb2.Money(amount_minor=yen, currency="JPY"),
        source_ref=ref,
        idempotency_key=key(),
    )
    response: pb.EarnResponse = await points.stub.Earn(request, metadata=points.auth(service), timeout=30)
    return response


async def test_wallet_page_shows_kinds_pending_expiring_history_and_this_months_multiplier(points: Points) -> None:
    await points.register("m", "other")
    await earn(points, "m", "fintech", 10_000, "p1")  # 1% base
    await earn(points, "m", "shop", 10_000, "o1")  # 1% base + 1% for having used the card
    await points.credit("m", 30, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=points.clock.now() + timedelta(days=3))
    await points.reserve("m", 20)
    await points.credit("other", 999)

    async with await browser(points, None) as anonymous:
        resp = await anonymous.get("/wallet", headers={"accept": "text/html"})
        assert resp.status_code == 303 and resp.headers["location"].startswith("/auth/login?next=")

    async with await browser(points, "m") as signed_in:
        page = await signed_in.get("/wallet")
        assert page.status_code == 200, page.text
        html = page.text
        assert 'class="kz-header"' in html and "/_kizuna/kizuna.css" in html and "Hana" in html
        assert 'data-testid="total">310 pt' in html  # 100 + 200 + 30 limited - 20 held (limited first)
        assert 'data-testid="regular">300<' in html and 'data-testid="limited">10<' in html
        assert 'data-testid="pending">20 pt<' in html
        expiring = (points.clock.now() + timedelta(days=3)).date()
        assert f"<b>10 pt</b><span>on {expiring.day} {expiring:%b} {expiring.year}</span>" in html
        assert "Earned at shop on o1: 1% base + 1% for using card this month" in html
        assert "You used card, shop this month." in html
        # Travel, not used yet, earns 1% base + 1% each for card and shop: x3.
        assert '<tr data-testid="rate-travel"><td>travel</td><td class="kz-num" data-label="You earn">3.0%</td>' in html
        assert "\u00d73.0" in html
        assert "999" not in html  # another member's points never show

        me = (await signed_in.get("/_kizuna/me")).json()
        assert me == {"signed_in": True, "name": "Hana", "points": 310}

    async with await browser(points, None) as anonymous:
        assert (await anonymous.get("/_kizuna/me")).json()["signed_in"] is False


async def test_wallet_json_for_api_clients_needs_the_members_own_token(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 40)
    async with http(points) as client:
        token = points.issuer.member_token("m", scope="points:read")
        wallet = (await client.get("/api/wallet", headers={"authorization": f"Bearer {token}"})).json()
        assert wallet["balance"]["total"] == 40 and wallet["entries"][0]["explanation"] == "test credit"
        assert (await client.get("/api/wallet")).status_code == 401


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_admin_reports_need_points_admin(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 100, service="shop")
    await points.credit("m", 50, service="travel")
    await points.spend("m", 30)
    start = (points.clock.now() - timedelta(hours=1)).isoformat()
    end = (points.clock.now() + timedelta(hours=1)).isoformat()
    admin = _bearer(points.issuer.service_token("ops", "points:admin"))
    async with http(points) as client:
        for path in ("/admin/audit", f"/admin/settlement?start={start}&end={end}"):
            path = path.replace("+00:00", "Z")
            assert (await client.get(path)).status_code == 401
            not_admin = _bearer(points.issuer.service_token("shop", "points:credit points:read"))
            assert (await client.get(path, headers=not_admin)).status_code == 403
            member = _bearer(points.issuer.member_token("m", scope="points:read"))
            assert (await client.get(path, headers=member)).status_code == 403
        report = (await client.get("/admin/audit", headers=admin)).json()
        assert report["ok"] is True and report["problems"] == []
        assert (report["issued"], report["redeemed"], report["outstanding"]) == (150, 30, 120)

        settlement = await client.get("/admin/settlement", params={"start": start, "end": end}, headers=admin)
        lines = {line["service"]: line for line in settlement.json()["services"]}
        assert (lines["shop"]["issued"], lines["shop"]["redeemed"]) == (100, 30)
        assert (lines["travel"]["issued"], lines["travel"]["redeemed"]) == (50, 0)
        later = (points.clock.now() + timedelta(hours=2)).isoformat()
        empty = await client.get("/admin/settlement", params={"start": end, "end": later}, headers=admin)
        assert empty.json()["services"] == []
        backwards = await client.get("/admin/settlement", params={"start": end, "end": start}, headers=admin)
        assert backwards.status_code == 400
        naive = await client.get(
            "/admin/settlement", params={"start": "2025-01-01T00:00:00", "end": "2025-02-01T00:00:00"}, headers=admin
        )
        assert naive.status_code == 400


async def test_audit_command_passes_on_a_sound_ledger_and_fails_on_a_tampered_one(
    points: Points, database_url: str
) -> None:
    await points.register("m")
    await points.credit("m", 100)
    await points.spend("m", 40)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": "nats://127.0.0.1:1",
        "KIZUNA_ISSUER": "http://127.0.0.1:1",
        "LOG_LEVEL": "ERROR",
    }

    async def run_audit() -> tuple[int, dict[str, Any]]:
        # In a thread: the points runtime of this test shares the event loop and may be holding
        # SQLite's write lock in a transaction that only finishes if the loop keeps running.
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "points", "audit"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stdout.strip(), f"exit {done.returncode}, no report; stderr:\n{done.stderr}"
        return done.returncode, json.loads(done.stdout)

    code, report = await run_audit()
    assert code == 0, report
    assert (report["ok"], report["issued"], report["redeemed"], report["outstanding"]) == (True, 100, 40, 60)

    # A balance row that no longer equals its postings: the audit names it and exits 1.
    async with points.runtime.db.transaction() as session:
        await (await session.connection()).execute(text("UPDATE points_wallet SET available = available + 5"))
    code, report = await run_audit()
    assert code == 1 and report["ok"] is False
    assert any("m" in problem and "available" in problem for problem in report["problems"]), report["problems"]
    async with points.runtime.db.transaction() as session:  # put it back for the fixture's own audit
        await (await session.connection()).execute(text("UPDATE points_wallet SET available = available - 5"))


async def test_wallet_shows_held_spends_and_points_being_earned_in_the_members_language(
    points: Points, nats_url: str
) -> None:
    from .test_points_events import purchase, sold, wait_until

    await points.register("m")
    await earn(points, "m", "fintech", 10_000, "p1")
    held = await points.reserve("m", 40, ttl=2 * 86_400)
    lapses = held.expires_at.ToDatetime(tzinfo=UTC).date()
    await sold(nats_url, "shop", "paid", purchase("o9", paid=10_000, label="order o9"))

    async def earning() -> bool:
        return (await points.balance("m")).earning > 0

    await wait_until(earning)
    async with await browser(points, "m") as signed_in:
        english = (await signed_in.get("/wallet")).text
        assert f"Held until {lapses.day} {lapses:%b} {lapses.year}" in english
        assert "40 held" in english and "Held: checkout" in english
        assert "+200 being earned" in english and "Being earned at shop on order o9" in english
        assert "When the purchase completes" in english
        assert '<tr data-testid="held" data-service="shop" data-amount="-40">' in english
        assert '<tr data-testid="being-earned" data-service="shop" data-amount="200">' in english
        assert '<tr data-testid="posted" data-service="fintech" data-amount="100">' in english

        signed_in.cookies.set("kz_lang", "ja")
        japanese = (await signed_in.get("/wallet")).text
        assert f"{lapses.year}年{lapses.month}月{lapses.day}日まで保留" in japanese
        assert "40 保留中" in japanese and "ショップでのお支払いのため保留中" in japanese
        assert "+200 獲得予定" in japanese and "ショップ（注文 o9）で獲得予定" in japanese  # noqa: RUF001
        assert "カード（p1）で獲得：基本 1%" in japanese  # noqa: RUF001
        for english_only in ("Held:", "Earned at", "Being earned at", "checkout"):
            assert english_only not in japanese

    token = points.issuer.member_token("m", scope="points:read")
    async with http(points) as client:
        wallet = (await client.get("/api/wallet", params={"locale": "ja"}, headers=_bearer(token))).json()
        assert [(e["kind"], e["amount"]) for e in wallet["entries"]] == [
            ("earning", 200),
            ("hold", -40),
            ("credit", 100),
        ]
        kinds = {e["kind"]: e for e in wallet["entries"]}
        assert kinds["hold"]["until"].startswith(lapses.isoformat())
        assert kinds["hold"]["explanation"] == "ショップでのお支払いのため保留中"
        assert (kinds["earning"]["source_service"], kinds["earning"]["source_ref"]) == ("shop", "o9")
        assert kinds["earning"]["until"] is None
        assert kinds["credit"]["explanation"] == "カード（p1）で獲得：基本 1%"  # noqa: RUF001
        assert wallet["locale"] == "ja"
        english_json = (await client.get("/api/wallet", headers=_bearer(token))).json()
        assert english_json["entries"][-1]["explanation"] == "Earned at card on p1: 1% base"
        bad = await client.get("/api/wallet", params={"locale": "fr"}, headers=_bearer(token))
        assert bad.status_code == 422
