"""The travel service: what it serves, consumes and publishes.

Serves the JSON API (`/api/...`), web pages and TravelService (gRPC); calls PointsService and
PaymentsService; publishes travel.booking.confirmed|cancelled|completed; runs the saga recovery
and stay-completion job. `python -m travel seed` seeds the catalogue (or SEED_CATALOGUE=true).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from fastapi import APIRouter
from kizuna.kit.clock import LiveClock
from kizuna.kit.db import Database, utcnow
from kizuna.kit.earn_preview import EarnPreviews
from kizuna.kit.service import Runtime, Service
from kizuna.travel.v1 import travel_pb2_grpc

from travel import catalogue, http_api, member_data, pages, stay
from travel.booking import Bookings
from travel.grpc_api import TravelApi
from travel.payment import PaymentGateway
from travel.settings import Settings

log = logging.getLogger("travel")


def bookings_context(runtime: Runtime[Settings]) -> Bookings:
    """`Service(context=...)`: the booking saga, on the runtime's clock (a test may swap it)."""
    s = runtime.settings
    payments = PaymentGateway(s.points_addr, s.fintech_addr, runtime.service_tokens, s.peer_timeout_seconds)
    return Bookings(
        runtime.db,
        payments,
        max_stay_nights=s.max_stay_nights,
        reservation_ttl_seconds=s.points_reservation_ttl_seconds,
        stuck_after_seconds=s.saga_stuck_after_seconds,
        clock=LiveClock(lambda: runtime.clock),
        earn=EarnPreviews.of(payments.points, s),
    )


async def seed_on_start(runtime: Runtime[Settings]) -> None:
    s = runtime.settings
    if s.seed_catalogue:
        added = await catalogue.seed(runtime.db, start=stay.hotel_today(runtime.clock.now()), days=s.catalogue_days)
        log.info("catalogue seeded", extra=asdict(added))


async def booking_jobs(runtime: Runtime[Settings]) -> None:
    """Every interval: finish or undo stuck sagas, then complete the stays that are over."""
    while True:
        await asyncio.sleep(runtime.settings.jobs_interval_seconds)
        bookings = runtime.context_as(Bookings)
        try:
            await bookings.recover_stuck()
            await bookings.complete_stays()
        except Exception:
            log.exception("booking jobs failed; will run again")


def seed_command(settings: Settings, args: list[str]) -> int:
    """`python -m travel seed`: migrate, then add the catalogue and inventory (idempotent)."""
    service.migrate(settings)

    async def run() -> catalogue.Seeded:
        db = Database(settings.database_url_for("travel"))
        try:
            return await catalogue.seed(db, start=stay.hotel_today(utcnow()), days=settings.catalogue_days)
        finally:
            await db.dispose()

    added = asyncio.run(run())
    print(f"seeded: {asdict(added)}")
    return 0


# What a member grants travel's pages: spending their points and charging their card for a booking.
PAGE_SCOPES = "openid profile offline_access points:read points:spend fintech:pay"

router = APIRouter()
for part in (http_api.router, pages.router):
    router.include_router(part)

service = Service(
    name="travel",
    settings=Settings,
    http=router,
    grpc=[(travel_pb2_grpc.add_TravelServiceServicer_to_server, TravelApi)],
    jobs=[booking_jobs],
    context=bookings_context,
    on_start=[seed_on_start],
    web_sign_in_scopes=PAGE_SCOPES,
    commands={"seed": seed_command},
    privacy=member_data.privacy,
)
