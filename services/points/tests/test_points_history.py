"""The member's history (ListEntries) with open holds and pending earnings first, in English or
Japanese, and the campaigns live now (ListLiveCampaigns), through real gRPC and NATS."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import grpc
import nats
from kizuna.common.v1 import common_pb2
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.points.v1 import points_pb2 as pb
from points import campaigns

from .pointskit import Points, key
from .test_points_api import status_of
from .test_points_events import purchase, sold, wait_until

DAY = timedelta(days=1)


async def history(
    points: Points, member: str, locale: str = "", size: int = 0, token: str = ""
) -> pb.ListEntriesResponse:
    request = pb.ListEntriesRequest(
        member_id=member, locale=locale, page=common_pb2.PageRequest(page_size=size, page_token=token)
    )
    response: pb.ListEntriesResponse = await points.stub.ListEntries(request, metadata=points.auth(), timeout=30)
    return response


async def test_open_holds_and_pending_earnings_come_first_then_posted_entries(points: Points, nats_url: str) -> None:
    await points.register("m")
    for n in range(3):
        await points.credit("m", 100, reason=f"gift {n}")
        points.clock.advance(timedelta(seconds=1))
    await sold(nats_url, "shop", "paid", purchase("order 77", paid=10_000, label="order 77"))

    async def earning() -> bool:
        return (await points.balance("m")).earning == 100

    await wait_until(earning)
    points.clock.advance(timedelta(seconds=1))
    first = await points.reserve("m", 30, ttl=600)
    points.clock.advance(timedelta(seconds=1))
    second = await points.reserve("m", 20, ttl=900)

    page = await history(points, "m", size=2)
    kinds = [e.kind for e in page.entries]
    assert kinds == [
        pb.ENTRY_KIND_HOLD,
        pb.ENTRY_KIND_HOLD,
        pb.ENTRY_KIND_EARNING,
        pb.ENTRY_KIND_CREDIT,
        pb.ENTRY_KIND_CREDIT,
    ]
    newest, older, pending = page.entries[:3]
    assert (newest.entry_id, newest.amount) == (second.reservation_id, -20)
    assert newest.until == second.expires_at
    assert (older.entry_id, older.amount, older.until) == (first.reservation_id, -30, first.expires_at)
    assert newest.explanation == "Held: checkout" and newest.source_service == "shop"
    assert (pending.amount, pending.source_service, pending.source_ref) == (100, "shop", "order 77")
    assert not pending.HasField("until")
    assert pending.explanation == "Being earned at shop on order 77"
    assert [e.explanation for e in page.entries[3:]] == ["gift 2", "gift 1"]
    assert not page.entries[3].HasField("until")
    # Later pages hold posted entries only: the open items are never repeated.
    rest = await history(points, "m", size=2, token=page.page_info.next_page_token)
    assert [e.explanation for e in rest.entries] == ["gift 0"]
    assert not rest.page_info.next_page_token

    # A captured hold becomes a spend; a voided one and a completed earning leave the open items.
    await points.capture(first.reservation_id)
    await points.stub.Void(
        pb.VoidRequest(reservation_id=second.reservation_id, idempotency_key=key()), metadata=points.auth()
    )
    await sold(nats_url, "shop", "completed", purchase("order 77", paid=10_000, label="order 77"))

    async def granted() -> bool:
        return (await points.balance("m")).earning == 0

    await wait_until(granted)
    after = await history(points, "m")
    assert pb.ENTRY_KIND_HOLD not in [e.kind for e in after.entries]
    assert pb.ENTRY_KIND_EARNING not in [e.kind for e in after.entries]
    assert [e.kind for e in after.entries][:2] == [pb.ENTRY_KIND_CREDIT, pb.ENTRY_KIND_SPEND]

    # A hold that lapsed is not listed as open, even before anything settled it.
    lapsing = await points.reserve("m", 10, ttl=60)
    points.clock.advance(timedelta(seconds=61))
    assert lapsing.reservation_id not in [e.entry_id for e in (await history(points, "m")).entries]


async def test_explanations_are_in_the_requested_language(points: Points, nats_url: str) -> None:
    await points.register("m")
    await sold(nats_url, "fintech", "completed", purchase("p1", label="card purchase at Cafe"))

    async def has(total: int) -> bool:
        return (await points.balance("m")).total == total

    await wait_until(lambda: has(100))
    await sold(nats_url, "shop", "completed", purchase("o1", label="order o1"))
    await wait_until(lambda: has(300))
    await points.credit("m", 50, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=points.clock.now() + DAY, reason="gift")
    held = await points.reserve("m", 40)
    await points.capture(held.reservation_id, 40)
    points.clock.advance(2 * DAY)  # the 10 limited-time points left expire (settled by the next call)
    open_hold = await points.reserve("m", 5, ttl=600)

    english = await history(points, "m", locale="en")
    assert english == await history(points, "m")  # empty means English
    japanese = await history(points, "m", locale="ja")
    assert [(e.entry_id, e.kind, e.amount, e.source_ref) for e in japanese.entries] == [
        (e.entry_id, e.kind, e.amount, e.source_ref) for e in english.entries
    ]
    said = {e.entry_id: (e.explanation, j.explanation) for e, j in zip(english.entries, japanese.entries, strict=True)}
    assert said[open_hold.reservation_id] == ("Held: checkout", "ショップでのお支払いのため保留中")
    lines = [j for _, j in said.values()]
    assert "期間限定ポイント 10 が失効" in lines
    assert "ショップでご利用" in lines
    assert "ショップ（注文 o1）で獲得：基本 1% + 今月カードをご利用で +1%" in lines  # noqa: RUF001
    assert "カード（Cafeでのカード利用）で獲得：基本 1%" in lines  # noqa: RUF001
    assert "ショップからのポイント" in lines  # a caller's free-text reason the catalogue does not know
    assert len(lines) == 6

    bad = pb.ListEntriesRequest(member_id="m", locale="fr")
    assert await status_of(points.stub.ListEntries(bad, metadata=points.auth())) == grpc.StatusCode.INVALID_ARGUMENT


async def _campaign(
    points: Points,
    name: str,
    starts: timedelta,
    ends: timedelta,
    *,
    kind: Literal["earn", "welcome"] = "earn",
    services: tuple[str, ...] = ("*",),
    multiplier: float = 2.0,
    fixed_bonus: int = 0,
    audience: Literal["all", "new_members", "first_use"] = "all",
) -> str:
    now = points.clock.now()
    campaign = campaigns.NewCampaign(
        name=name,
        kind=kind,
        services=list(services),
        starts_at=now + starts,
        ends_at=now + ends,
        points_expire_at=now + ends + 30 * DAY,
        multiplier=multiplier,
        fixed_bonus=fixed_bonus,
        audience=audience,
    )
    async with points.runtime.db.transaction() as session:
        row = await campaigns.create(session, campaign, now, ["shop", "travel", "fintech"], 1_000_000)
        return row.id


async def test_live_campaigns_are_listed_for_whoever_may_read_a_balance(points: Points) -> None:
    live = await _campaign(points, "Travel week", -DAY, 7 * DAY, services=("travel",), audience="first_use")
    soon = await _campaign(points, "Welcome", -DAY, 2 * DAY, kind="welcome", multiplier=0.0, fixed_bonus=300)
    await _campaign(points, "Next month", 10 * DAY, 40 * DAY)
    await _campaign(points, "Last month", -40 * DAY, -10 * DAY)

    request = pb.ListLiveCampaignsRequest()
    found = await points.stub.ListLiveCampaigns(request, metadata=points.auth(scope="points:read"))
    assert [c.campaign_id for c in found.campaigns] == [soon, live]
    welcome, travel = found.campaigns
    assert (welcome.name, welcome.kind, welcome.fixed_bonus, welcome.multiplier) == ("Welcome", "welcome", 300, 0.0)
    assert (travel.kind, list(travel.services), travel.multiplier, travel.audience) == (
        "earn",
        ["travel"],
        2.0,
        "first_use",
    )
    assert travel.ends_at.ToDatetime() - travel.starts_at.ToDatetime() == 8 * DAY
    # A member's own token with points:read (passed on by a service) reads them too.
    assert await points.stub.ListLiveCampaigns(request, metadata=points.auth(member="m")) == found
    # Whoever may not read a balance may not read these either.
    no_scope = points.auth(scope="points:credit")
    assert (
        await status_of(points.stub.ListLiveCampaigns(request, metadata=no_scope)) == grpc.StatusCode.PERMISSION_DENIED
    )
    member_without = points.auth(member="m", member_scope="points:spend")
    assert await status_of(points.stub.ListLiveCampaigns(request, metadata=member_without)) in (
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # When they end, they are gone.
    points.clock.advance(3 * DAY)
    later = await points.stub.ListLiveCampaigns(request, metadata=points.auth())
    assert [c.campaign_id for c in later.campaigns] == [live]


async def test_a_welcome_bonus_named_after_its_kind_is_said_once_in_either_language(
    points: Points, nats_url: str
) -> None:
    await _campaign(points, "Welcome bonus", -DAY, 2 * DAY, kind="welcome", multiplier=0.0, fixed_bonus=300)
    await _campaign(points, "Spring", -DAY, 2 * DAY, kind="welcome", multiplier=0.0, fixed_bonus=100)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="IDENTITY", subjects=["identity.>"])
        joined = identity.MemberRegistered(member_id="joiner").SerializeToString()
        await js.publish("identity.member.registered", joined, headers={"ce-id": "joined-1"})
    finally:
        await nc.close()

    async def welcomed() -> bool:
        return (await points.balance("joiner")).total == 400

    await wait_until(welcomed)
    english = {e.explanation for e in (await history(points, "joiner", locale="en")).entries}
    japanese = {e.explanation for e in (await history(points, "joiner", locale="ja")).entries}
    assert english == {"Welcome bonus", "Welcome bonus: Spring"}
    assert japanese == {"入会ボーナス", "入会ボーナス\N{FULLWIDTH COLON}Spring"}
