"""What identity's home page shows a signed-in member: their points (balance, what expires when,
spends held for checkouts, points being earned and when), the campaigns live now and their recent
activity across the services, read from points with a short-lived `points:read` token identity
mints for the member (as the header does), never stored. points writes its explanations in the
member's language (ListEntriesRequest.locale).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import grpc
from kizuna.kit.auth import call_metadata
from kizuna.kit.points import READ_SCOPE
from kizuna.kit.rpc import client_channel
from kizuna.kit.web import service_links
from kizuna.kit.web.wording import line_for_member
from kizuna.points.v1 import points_pb2, points_pb2_grpc

from identity.provider import Provider

log = logging.getLogger("identity.home")

HOME_CLIENT_ID = "identity"
TOKEN_SECONDS = 60
RECENT = 6

# Where a line of activity is shown in full, by the service that wrote it.
_PAGES = {"shop": "/orders#order-{ref}", "travel": "/trips/{ref}", "fintech": "/card"}


@dataclass
class Activity:
    """A line of the member's points: a posted entry, a held spend or points being earned."""

    text: str
    points: int
    service: str
    at: datetime | None
    href: str
    # Held spends and points being earned: when the hold lapses / the points are expected.
    until: datetime | None = None


@dataclass
class Campaign:
    """A campaign live now, as the member reads it: what it gives, where, for whom, until when."""

    name: str
    kind: str
    # Labels of the services whose purchases it applies to; empty: every service.
    services: list[str]
    # Times the base rate (0: none) and points per purchase or on joining (0: none).
    multiplier: float
    fixed_bonus: int
    audience: str
    ends_at: datetime | None

    @property
    def times(self) -> str:
        """The multiplier as people write it: `2`, `1.5`."""
        return f"{self.multiplier:g}"


@dataclass
class Home:
    available: bool
    total: int = 0
    pending: int = 0
    earning: int = 0
    expiring_amount: int = 0
    expiring_at: datetime | None = None
    # Open items first (points' ListEntries lists them before posted entries).
    held: list[Activity] = field(default_factory=list)
    being_earned: list[Activity] = field(default_factory=list)
    activity: list[Activity] = field(default_factory=list)
    campaigns: list[Campaign] = field(default_factory=list)


def activity_link(service: str, ref: str) -> str:
    links = {link["name"]: link["url"] for link in service_links()}
    base = links.get(service, "")
    if not base:
        return ""
    page = _PAGES.get(service)
    if page and ref:
        return base.rstrip("/") + page.format(ref=ref)
    return base


def _when(entry: points_pb2.Entry, name: Literal["created_at", "until"]) -> datetime | None:
    return getattr(entry, name).ToDatetime() if entry.HasField(name) else None


def _line(entry: points_pb2.Entry, labels: dict[str, str]) -> Activity:
    return Activity(
        text=line_for_member(entry.explanation) or labels.get(entry.source_service, entry.source_service),
        points=int(entry.amount),
        service=labels.get(entry.source_service, entry.source_service.capitalize()),
        at=_when(entry, "created_at"),
        href=activity_link(entry.source_service, entry.source_ref),
        until=_when(entry, "until"),
    )


def _campaign(campaign: points_pb2.LiveCampaign, labels: dict[str, str]) -> Campaign:
    services = list(campaign.services)
    return Campaign(
        name=campaign.name,
        kind=campaign.kind,
        services=[] if "*" in services else [labels.get(s, s.capitalize()) for s in services],
        multiplier=float(campaign.multiplier),
        fixed_bonus=int(campaign.fixed_bonus),
        audience=campaign.audience,
        ends_at=campaign.ends_at.ToDatetime() if campaign.HasField("ends_at") else None,
    )


async def member_home(provider: Provider, member_id: str, locale: str) -> Home:
    """The member's points, live campaigns and recent activity, with points' explanations in
    `locale` ("ja" or "en"); `available=False` when points cannot answer. Campaigns are extra: when
    points cannot list them (down, or a version without ListLiveCampaigns) there are none."""
    token, _jti, _exp = provider.issuer.access_token(
        subject=member_id, client_id=HOME_CLIENT_ID, scope=READ_SCOPE, lifetime=TOKEN_SECONDS, now=provider.now()
    )
    labels = {link["name"]: link["label"] for link in service_links()}
    metadata = call_metadata(token)
    try:
        async with client_channel(
            provider.settings.points_addr, retry_services=["kizuna.points.v1.PointsService"]
        ) as channel:
            stub = points_pb2_grpc.PointsServiceStub(channel)
            balance, entries, campaigns = await asyncio.gather(
                stub.GetBalance(points_pb2.GetBalanceRequest(member_id=member_id), metadata=metadata, timeout=3),
                stub.ListEntries(
                    points_pb2.ListEntriesRequest(member_id=member_id, locale=locale), metadata=metadata, timeout=3
                ),
                _live_campaigns(stub, metadata),
            )
    except grpc.aio.AioRpcError as exc:
        log.warning("points unavailable for the home page", extra={"code": exc.code().name})
        return Home(available=False)
    expiring = balance.expiring_soon if balance.HasField("expiring_soon") else None
    held = points_pb2.ENTRY_KIND_HOLD
    earning = points_pb2.ENTRY_KIND_EARNING
    posted = [e for e in entries.entries if e.kind not in (held, earning)]
    return Home(
        available=True,
        total=int(balance.total),
        pending=int(balance.pending),
        earning=int(balance.earning),
        expiring_amount=int(expiring.amount) if expiring else 0,
        expiring_at=expiring.expires_at.ToDatetime().replace(tzinfo=None) if expiring and expiring.amount else None,
        held=[_line(e, labels) for e in entries.entries if e.kind == held],
        being_earned=[_line(e, labels) for e in entries.entries if e.kind == earning],
        activity=[_line(e, labels) for e in posted[:RECENT]],
        campaigns=[_campaign(c, labels) for c in campaigns],
    )


async def _live_campaigns(
    stub: points_pb2_grpc.PointsServiceStub, metadata: Sequence[tuple[str, str]]
) -> list[points_pb2.LiveCampaign]:
    try:
        reply = await stub.ListLiveCampaigns(points_pb2.ListLiveCampaignsRequest(), metadata=metadata, timeout=3)
    except grpc.aio.AioRpcError as exc:
        log.warning("points' live campaigns unavailable for the home page", extra={"code": exc.code().name})
        return []
    return list(reply.campaigns)
