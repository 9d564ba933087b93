"""Campaigns as data: the admin API (scope points:admin) and its refusals, campaign points paid as
limited-time points that are spent first and expire, audiences, the welcome bonus on joining, and
`python -m points seed` (idempotent)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import httpx
import nats
from kizuna.common.v1 import common_pb2
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.kit.testing import wait_until
from kizuna.points.v1 import points_pb2 as pb
from points.expiry import run_expiry

from .pointskit import Points, key


def http(points: Points) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{points.runtime.http_port}", timeout=30)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def admin(points: Points) -> dict[str, str]:
    return bearer(points.issuer.service_token("ops", "points:admin"))


def campaign(points: Points, **fields: Any) -> dict[str, Any]:
    now = points.clock.now()
    body = {
        "name": f"c-{key()[:8]}",
        "starts_at": (now - timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(days=10)).isoformat(),
        "points_expire_at": (now + timedelta(days=20)).isoformat(),
        "multiplier": 2.0,
    }
    return {**body, **fields}


async def earn(points: Points, member: str, service: str, amount: int) -> pb.EarnResponse:
    request = pb.EarnRequest(
        member_id=member, purchase=common_pb2.Money(amount_minor=amount, currency="JPY"), idempotency_key=key()
    )
    response: pb.EarnResponse = await points.stub.Earn(request, metadata=points.auth(service), timeout=30)
    return response


async def test_campaigns_need_points_admin_and_bad_ones_are_refused(points: Points) -> None:
    async with http(points) as client:
        good = campaign(points, name="Spring x2")
        assert (await client.post("/admin/campaigns", json=good)).status_code == 401
        not_admin = bearer(points.issuer.service_token("shop", "points:credit"))
        assert (await client.post("/admin/campaigns", json=good, headers=not_admin)).status_code == 403
        now = points.clock.now()
        bad: list[dict[str, Any]] = [
            {"ends_at": (now - timedelta(days=2)).isoformat()},  # ends before it starts
            {"services": ["casino"]},  # not an earner
            {"multiplier": 0.0},  # gives nothing
            {"multiplier": 0.0, "fixed_bonus": 10**12},  # above the most one credit may give
            {"multiplier": 50.0},
            {"starts_at": "2025-01-01T00:00:00"},  # no time zone
            {"audience": "everyone"},
            {"kind": "welcome"},  # a welcome gives a fixed bonus, no multiplier
            {"name": ""},
        ]
        for fields in bad:
            resp = await client.post("/admin/campaigns", json=campaign(points, **fields), headers=admin(points))
            assert resp.status_code in (400, 422), (fields, resp.status_code, resp.text)
        created = await client.post("/admin/campaigns", json=good, headers=admin(points))
        assert created.status_code == 201, created.text
        assert created.json()["services"] == ["*"] and created.json()["multiplier"] == 2.0
        again = await client.post("/admin/campaigns", json=good, headers=admin(points))
        assert again.status_code == 409
        listed = (await client.get("/admin/campaigns", headers=admin(points))).json()["campaigns"]
        assert [c["name"] for c in listed] == ["Spring x2"]
        assert (await client.get("/admin/campaigns", headers=not_admin)).status_code == 403


async def test_campaign_points_are_limited_time_spent_first_and_expire(points: Points) -> None:
    await points.register("m")
    async with http(points) as client:
        body = campaign(points, name="Shop x2", services=["shop"])
        assert (await client.post("/admin/campaigns", json=body, headers=admin(points))).status_code == 201
    earned = await earn(points, "m", "shop", 10_000)
    assert (earned.earned, earned.bonus) == (100, 100)
    assert "100 limited-time points from Shop x2" in earned.explanation
    # Not at travel: the campaign is the shop's (travel earns 1% + 1% for having used the shop).
    assert (await earn(points, "m", "travel", 10_000)).bonus == 0
    balance = await points.balance("m")
    assert (balance.total, balance.regular, balance.limited_time) == (400, 300, 100)
    await points.spend("m", 60)  # limited-time points go first
    balance = await points.balance("m")
    assert (balance.regular, balance.limited_time) == (300, 40)
    points.clock.advance(timedelta(days=21))
    await run_expiry(points.runtime.db, points.clock.now())
    balance = await points.balance("m")
    assert (balance.total, balance.regular, balance.limited_time) == (300, 300, 0)


async def test_first_use_and_new_member_audiences(points: Points) -> None:
    await points.register("m")
    async with http(points) as client:
        first = campaign(points, name="First trip", services=["travel"], multiplier=0.0, fixed_bonus=500)
        first["audience"] = "first_use"
        assert (await client.post("/admin/campaigns", json=first, headers=admin(points))).status_code == 201
    assert (await earn(points, "m", "travel", 1_000)).bonus == 500
    assert (await earn(points, "m", "travel", 1_000)).bonus == 0  # not the first use any more
    async with http(points) as client:
        fresh = campaign(points, name="New here", multiplier=0.0, fixed_bonus=70, audience="new_members")
        fresh["new_member_days"] = 7
        assert (await client.post("/admin/campaigns", json=fresh, headers=admin(points))).status_code == 201
    assert (await earn(points, "m", "shop", 1_000)).bonus == 70
    points.clock.advance(timedelta(days=8))  # no longer a new member (the campaigns still run)
    assert (await earn(points, "m", "shop", 1_000)).bonus == 0


async def test_welcome_bonus_on_joining_once(points: Points, nats_url: str) -> None:
    async with http(points) as client:
        welcome = campaign(points, name="Welcome", kind="welcome", multiplier=0.0, fixed_bonus=300)
        assert (await client.post("/admin/campaigns", json=welcome, headers=admin(points))).status_code == 201
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="IDENTITY", subjects=["identity.>"])
        joined = identity.MemberRegistered(member_id="newbie").SerializeToString()
        await js.publish("identity.member.registered", joined, headers={"ce-id": "reg-1"})
        await js.publish("identity.member.registered", joined, headers={"ce-id": "reg-2"})  # told twice
        await js.publish("identity.member.registered", joined, headers={"ce-id": "reg-3"})
    finally:
        await nc.close()

    async def welcomed() -> Any:
        balance = await points.balance("newbie")
        return balance if balance.total else None

    balance = await wait_until(welcomed, timeout=20)
    assert (balance.total, balance.limited_time) == (300, 300)
    entries = (await points.entries("newbie")).entries
    assert [e.explanation for e in entries] == ["Welcome bonus: Welcome"]
    assert balance.expiring_soon.amount == 300


async def test_seed_creates_the_welcome_bonus_and_a_live_campaign_once(points: Points, database_url: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": "nats://127.0.0.1:1",
        "KIZUNA_ISSUER": "http://127.0.0.1:1",
        "LOG_LEVEL": "ERROR",
    }

    async def seed() -> list[str]:
        # Off the event loop: this test's points runtime shares it and may hold SQLite's write lock.
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "points", "seed"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        created: list[str] = json.loads(done.stdout)["campaigns_created"]
        return created

    assert sorted(await seed()) == ["Kizuna launch: double points everywhere", "Welcome bonus"]
    assert await seed() == []
    await points.register("m")
    earned = await earn(points, "m", "shop", 10_000)
    assert (earned.earned, earned.bonus) == (100, 100)  # the live demo campaign doubles it
