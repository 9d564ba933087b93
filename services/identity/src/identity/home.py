"""What identity's home page shows a signed-in member: their points (balance, what expires when,
what is being earned) and their recent activity across the services, read from points with a
short-lived `points:read` token identity mints for the member (as the header does), never stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

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
    text: str
    points: int
    service: str
    at: datetime | None
    href: str


@dataclass
class Home:
    available: bool
    total: int = 0
    pending: int = 0
    earning: int = 0
    expiring_amount: int = 0
    expiring_at: datetime | None = None
    activity: list[Activity] = field(default_factory=list)


def activity_link(service: str, ref: str) -> str:
    links = {link["name"]: link["url"] for link in service_links()}
    base = links.get(service, "")
    if not base:
        return ""
    page = _PAGES.get(service)
    if page and ref:
        return base.rstrip("/") + page.format(ref=ref)
    return base


async def member_home(provider: Provider, member_id: str) -> Home:
    """The member's points and recent activity; `available=False` when points cannot answer."""
    token, _jti, _exp = provider.issuer.access_token(
        subject=member_id, client_id=HOME_CLIENT_ID, scope=READ_SCOPE, lifetime=TOKEN_SECONDS, now=provider.now()
    )
    labels = {link["name"]: link["label"] for link in service_links()}
    try:
        async with client_channel(
            provider.settings.points_addr, retry_services=["kizuna.points.v1.PointsService"]
        ) as channel:
            stub = points_pb2_grpc.PointsServiceStub(channel)
            metadata = call_metadata(token)
            balance = await stub.GetBalance(
                points_pb2.GetBalanceRequest(member_id=member_id), metadata=metadata, timeout=3
            )
            entries = await stub.ListEntries(
                points_pb2.ListEntriesRequest(member_id=member_id), metadata=metadata, timeout=3
            )
    except grpc.aio.AioRpcError as exc:
        log.warning("points unavailable for the home page", extra={"code": exc.code().name})
        return Home(available=False)
    expiring = balance.expiring_soon if balance.HasField("expiring_soon") else None
    return Home(
        available=True,
        total=int(balance.total),
        pending=int(balance.pending),
        earning=int(balance.earning),
        expiring_amount=int(expiring.amount) if expiring else 0,
        expiring_at=expiring.expires_at.ToDatetime().replace(tzinfo=None) if expiring and expiring.amount else None,
        activity=[
            Activity(
                text=line_for_member(e.explanation) or labels.get(e.source_service, e.source_service),
                points=int(e.amount),
                service=labels.get(e.source_service, e.source_service.capitalize()),
                at=e.created_at.ToDatetime() if e.HasField("created_at") else None,
                href=activity_link(e.source_service, e.source_ref),
            )
            for e in list(entries.entries)[:RECENT]
        ],
    )
