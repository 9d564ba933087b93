"""The shop's API beside the REAL points and fintech services (the kit's `ecosystem` fixture): members
with points and cards, balances, card holds, and what points' consumers have acknowledged."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import nats
from kizuna.kit.testing import TestIssuer, wait_until
from kizuna.kit.testing_stack import Ecosystem
from kizuna.points.v1 import points_pb2 as ppb

from services.shop.tests.shop_support import ShopApi


@dataclass
class ShopWorld:
    """The shop's API plus what a test needs to see on the real peers: balances, card holds."""

    api: ShopApi
    ecosystem: Ecosystem

    @property
    def issuer(self) -> TestIssuer:
        return self.ecosystem.issuer

    @property
    def nats_url(self) -> str:
        return self.ecosystem.nats_url

    async def member(self, *, points: int = 1000, income: int | None = 3_000_000) -> str:
        """A new member, registered at points (with `points` credited) and holding a card unless income is None.
        A card's limit is a tenth of the income (at least 100,000 JPY)."""
        card = income is not None
        member = await self.ecosystem.member(points=points, card=card, income_minor=income or 0)
        return member.id

    async def balance(self, member: str) -> ppb.GetBalanceResponse:
        return await self.ecosystem.balance(member)

    async def entries(self, member: str) -> list[ppb.Entry]:
        return await self.ecosystem.entries(member)

    async def shop_net(self, member: str) -> int:
        """What the shop's orders changed in the member's points (spends, refunds, earnings, clawbacks).
        The card's own earnings (fintech's purchases) are fintech's, so they are left out, and so are
        the entries points lists that are not posted (open holds, earnings still pending)."""
        return sum(
            e.amount
            for e in await self.entries(member)
            if e.source_service == "shop" and e.kind not in (ppb.ENTRY_KIND_HOLD, ppb.ENTRY_KIND_EARNING)
        )

    async def card(self, member: str) -> dict[str, Any]:
        """The member's card as fintech shows it to them: held_minor (open authorizations), owed_minor."""
        return await self.ecosystem.card(member)

    async def acknowledged_by_points(
        self, republished: list[tuple[str, int]], durable: str = "points-shop-earn"
    ) -> None:
        """Wait until points' durable consumer has acknowledged every republished message it takes
        (its ack floor is at or past the last of them and nothing is pending): only then does the
        balance tell whether a redelivery took effect again."""
        nc = await nats.connect(self.nats_url)
        try:
            js = nc.jetstream()
            config = (await js.consumer_info("SHOP", durable)).config
            filters = config.filter_subjects or [config.filter_subject or ">"]
            taken = [seq for subject, seq in republished if any(_matches(f, subject) for f in filters)]
            assert taken, f"none of the republished subjects reaches {durable} (filters {filters})"

            async def acknowledged() -> bool:
                info = await js.consumer_info("SHOP", durable)
                return info.ack_floor.stream_seq >= max(taken) and not info.num_pending and not info.num_ack_pending

            await wait_until(acknowledged)
        finally:
            await nc.close()


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a trailing `>` one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or token not in ("*", got[i]):
            return False
    return len(want) == len(got)


async def publish_identity_event(nats_url: str, subject: str, message: Any, member: str, event_id: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(
            subject,
            message.SerializeToString(),
            headers={"Nats-Msg-Id": event_id, "ce-id": event_id, "ce-subject": member, "ce-source": "kizuna/identity"},
        )
    finally:
        await nc.close()


async def republish_shop_events(nats_url: str) -> list[tuple[str, int]]:
    """Publish every shop event again as a redelivery would (same event id, new NATS message id);
    returns each republished message's subject and stream sequence."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("SHOP")
        republished: list[tuple[str, int]] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("SHOP", seq)
            assert msg.subject is not None, "a stored message has its subject"
            headers = dict(msg.headers or {})
            headers["Nats-Msg-Id"] = f"{headers.get('ce-id')}-again-{uuid.uuid4().hex[:6]}"
            ack = await js.publish(msg.subject, msg.data or b"", headers=headers)
            republished.append((msg.subject, ack.seq))
        return republished
    finally:
        await nc.close()
