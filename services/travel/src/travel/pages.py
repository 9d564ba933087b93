"""Travel's web pages on the kit layout: search, results, hotel, book, my trips, cancel.

Searching is open to everyone; booking, trips and cancelling need a member signed in through the
kit's OIDC relying party (`SignedInMember`). Booking passes the member's own access token (kept
server-side by the kit) to points and fintech, which is how the member authorizes the spend. The
forms that change something (book, cancel) carry the kit's CSRF token and are refused without it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from kizuna.kit.bounds import Int64
from kizuna.kit.csrf import FormMember
from kizuna.kit.db import SessionDep
from kizuna.kit.errors import DomainError, NotFound
from kizuna.kit.flash import flash
from kizuna.kit.i18n import gettext as _
from kizuna.kit.oidc_client import MaybeMember, SignedInMember
from kizuna.kit.web import IMAGE_PREFIX, page_templates
from kizuna.kit.web.wording import for_member

from travel import stay as rules
from travel.booking import FAILED, FAILING, PENDING, BookingRequest, Bookings
from travel.catalogue import CITIES
from travel.http_api import BookingsDep, parse_stay
from travel.models import Hotel, RatePlan, RoomType
from travel.search import hotel_page, search_hotels

templates = page_templates(
    Path(__file__).parent / "templates", service="travel", hotel_image=f"{IMAGE_PREFIX}hotel.svg"
)
router = APIRouter(include_in_schema=False)
log = logging.getLogger("travel.pages")


def yen(amount: int) -> str:
    return f"¥{amount:,}"


templates.env.filters["yen"] = yen


def _page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    member = context.get("member")
    context.setdefault("member_name", member.display_name if member else None)
    return templates.TemplateResponse(request, name, {"cities": CITIES, **context}, status_code=status)


def _error(request: Request, exc: DomainError, **context: Any) -> HTMLResponse:
    return _page(
        request,
        "travel/error.html",
        status=exc.http_status,
        message=for_member(exc.message),
        title=_("Sorry"),
        **context,
    )


@router.get("/", response_class=HTMLResponse)
async def search_page(request: Request, member: MaybeMember) -> HTMLResponse:
    today = rules.hotel_today(request.app.state.runtime.clock.now())
    return _page(
        request,
        "travel/search.html",
        title=_("Find a hotel"),
        member=member,
        default_in=today.isoformat(),
        default_out=(today.fromordinal(today.toordinal() + 1)).isoformat(),
    )


@router.get("/search", response_class=HTMLResponse)
async def results_page(
    request: Request,
    session: SessionDep,
    bookings: BookingsDep,
    member: MaybeMember,
    city: str = "",
    check_in: str = "",
    check_out: str = "",
    guests: Int64 = 2,
) -> HTMLResponse:
    try:
        stay = parse_stay(bookings, check_in, check_out, guests)
        results = await search_hotels(session, city, stay)
    except DomainError as exc:
        return _error(request, exc, member=member)
    return _page(
        request,
        "travel/results.html",
        title=_("Hotels in %(city)s") % {"city": _(CITIES[city])},
        city=city,
        stay=stay,
        results=results,
        member=member,
    )


@router.get("/hotels/{hotel_id}", response_class=HTMLResponse)
async def hotel_view(
    request: Request,
    session: SessionDep,
    bookings: BookingsDep,
    member: MaybeMember,
    hotel_id: str,
    check_in: str = "",
    check_out: str = "",
    guests: Int64 = 2,
) -> HTMLResponse:
    try:
        stay = parse_stay(bookings, check_in, check_out, guests) if check_in and check_out else None
        page = await hotel_page(session, hotel_id, stay)
    except DomainError as exc:
        return _error(request, exc, member=member)
    policies = {
        p.id: rules.CancellationPolicy(p.refundable, p.free_cancel_days, p.penalty_bp).describe() for p in page.plans
    }
    earn_by_total: dict[int, int | None] = {}
    if member is not None and stay is not None:
        totals = sorted({o.total_minor for o in page.offers})
        previews = await asyncio.gather(*(_earn_preview(bookings, member.member_id, t) for t in totals))
        earn_by_total = dict(zip(totals, previews, strict=True))
    return _page(
        request,
        "travel/hotel.html",
        earn_by_total=earn_by_total,
        title=page.hotel.name,
        page=page,
        stay=stay,
        guests=guests,
        policies=policies,
        member=member,
    )


async def _earn_preview(bookings: Bookings, member_id: str, amount_minor: int) -> int | None:
    """What paying for the stay would earn this member now (points' earn preview), or None."""
    try:
        preview = await bookings.payments.points.preview_earn(member_id=member_id, amount_minor=amount_minor)
    except DomainError as exc:  # the page works without it
        log.warning("earn preview unavailable", extra={"error": exc.message})
        return None
    return int(preview.total)


@router.get("/book", response_model=None)
async def book_link(request: Request, member: SignedInMember) -> Response:
    """An old or shared booking link: a GET never fills in a booking to pay; choose the room again."""
    hotel_id = request.query_params.get("hotel_id", "")
    flash(request, "info", _("Choose your room and rate to book."))
    target = f"/hotels/{quote(hotel_id)}" if hotel_id.startswith("htl_") else "/"
    return RedirectResponse(target, status_code=303)


@router.post("/book/review", response_class=HTMLResponse)
async def book_page(
    request: Request,
    member: FormMember,
    session: SessionDep,
    bookings: BookingsDep,
    hotel_id: Annotated[str, Form()],
    room_type_id: Annotated[str, Form()],
    rate_plan_id: Annotated[str, Form()],
    check_in: Annotated[str, Form()],
    check_out: Annotated[str, Form()],
    guests: Annotated[Int64, Form()] = 2,
) -> HTMLResponse:
    """The booking to review and pay, reached only by the hotel page's form (CSRF-checked)."""
    try:
        stay = parse_stay(bookings, check_in, check_out, guests)
        page = await hotel_page(session, hotel_id, stay)
        offer = next(
            (o for o in page.offers if o.room_type_id == room_type_id and o.rate_plan_id == rate_plan_id), None
        )
        if offer is None:
            raise NotFound("that room and rate are not offered for this stay")
    except DomainError as exc:
        return _error(request, exc, member=member)
    return _page(
        request,
        "travel/book.html",
        earn_points=await _earn_preview(bookings, member.member_id, offer.total_minor),
        title=_("Book"),
        member=member,
        hotel=page.hotel,
        offer=offer,
        stay=stay,
        key=uuid.uuid4().hex,
    )


@router.post("/book", response_model=None)
async def book_submit(
    request: Request,
    member: FormMember,
    bookings: BookingsDep,
    hotel_id: Annotated[str, Form()],
    room_type_id: Annotated[str, Form()],
    rate_plan_id: Annotated[str, Form()],
    check_in: Annotated[str, Form()],
    check_out: Annotated[str, Form()],
    guests: Annotated[Int64, Form()],
    idempotency_key: Annotated[str, Form()],
    points: Annotated[Int64, Form()] = 0,
) -> Response:
    try:
        booking = await bookings.book(
            member.member_id,
            await member.access_token(),
            BookingRequest(
                hotel_id=hotel_id,
                room_type_id=room_type_id,
                rate_plan_id=rate_plan_id,
                check_in=rules.parse_date(check_in, "check_in"),
                check_out=rules.parse_date(check_out, "check_out"),
                guests=guests,
                points=points,
                idempotency_key=idempotency_key,
            ),
        )
    except DomainError as exc:
        return _error(request, exc, member=member)
    flash(request, "success", _("Your booking is confirmed. Have a good trip!"))
    return RedirectResponse(f"/trips/{booking.id}", status_code=303)


async def _names(session: Any, hotel_ids: set[str], room_ids: set[str], plan_ids: set[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for model, ids in ((Hotel, hotel_ids), (RoomType, room_ids), (RatePlan, plan_ids)):
        for i in ids:
            row = await session.get(model, i)
            names[i] = row.name if row else i
    return names


@router.get("/trips", response_class=HTMLResponse)
async def trips_page(
    request: Request, member: SignedInMember, session: SessionDep, bookings: BookingsDep
) -> HTMLResponse:
    rows = await bookings.for_member(member.member_id)
    names = await _names(session, {b.hotel_id for b in rows}, {b.room_type_id for b in rows}, set())
    return _page(request, "travel/trips.html", title=_("My trips"), member=member, bookings=rows, names=names)


async def _own(bookings: Bookings, member_id: str, booking_id: str) -> Any:
    booking = await bookings.get(booking_id)
    if booking.member_id != member_id or booking.status in (PENDING, FAILING, FAILED):
        raise NotFound(f"unknown booking {booking_id!r}")
    return booking


@router.get("/trips/{booking_id}", response_class=HTMLResponse)
async def trip_page(
    request: Request, member: SignedInMember, session: SessionDep, bookings: BookingsDep, booking_id: str
) -> HTMLResponse:
    try:
        booking = await _own(bookings, member.member_id, booking_id)
    except DomainError as exc:
        return _error(request, exc, member=member)
    names = await _names(session, {booking.hotel_id}, {booking.room_type_id}, {booking.rate_plan_id})
    quote = bookings.quote_cancellation(booking) if booking.status == "confirmed" else None
    policy = rules.CancellationPolicy(booking.refundable, booking.free_cancel_days, booking.penalty_bp)
    return _page(
        request,
        "travel/trip.html",
        title=_("Your trip"),
        member=member,
        b=booking,
        names=names,
        quote=quote,
        terms=policy.describe(booking.check_in),
    )


@router.post("/trips/{booking_id}/cancel", response_model=None)
async def cancel_submit(
    request: Request,
    member: FormMember,
    bookings: BookingsDep,
    booking_id: str,
    confirmed: Annotated[str, Form()] = "",
) -> Response:
    try:
        booking = await _own(bookings, member.member_id, booking_id)
        quote_now = bookings.quote_cancellation(booking) if booking.status == "confirmed" else None
        if quote_now is not None and quote_now.penalty_minor > 0 and confirmed != "yes":
            # A cancellation that costs money happens only after the member saw the cost and said yes.
            flash(request, "warning", _("Please confirm the cancellation and its cost."))
            return RedirectResponse(f"/trips/{booking_id}", status_code=303)
        await bookings.cancel(member.member_id, booking_id)
    except DomainError as exc:
        return _error(request, exc, member=member)
    flash(request, "success", _("Your booking is cancelled."))
    return RedirectResponse(f"/trips/{booking_id}", status_code=303)
