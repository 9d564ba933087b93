"""Travel's web pages on the kit layout: search, results, hotel, book, my trips, cancel.

Searching is open to everyone; booking, trips and cancelling need a member signed in through the
kit's OIDC relying party (`SignedInMember`). Booking passes the member's own access token (kept
server-side by the kit) to points and fintech, which is how the member authorizes the spend. The
forms that change something (book, cancel) carry the kit's CSRF token and are refused without it.
Their messages for the next page are queued as catalogue keys, said in the language of the page
that shows them (kizuna.kit.flash).

A signed-in member sees what a stay would earn ("earn N pt", points' earn preview) on the hotel
cards, the hotel's rate table and the booking page: one call per distinct price, all at once,
remembered for a minute (the kit's `EarnPreviews`; the booking page's promise is asked afresh).
Without an answer from points within `EARN_PREVIEW_BUDGET_SECONDS` the pages show no badge, and
they stop asking for `EARN_PREVIEW_QUIET_SECONDS`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from kizuna.kit.bounds import Int64
from kizuna.kit.csrf import FormMember
from kizuna.kit.db import SessionDep
from kizuna.kit.errors import DomainError, NotFound
from kizuna.kit.flash import flash
from kizuna.kit.i18n import gettext as _
from kizuna.kit.oidc_client import MaybeMember, SignedInMember
from kizuna.kit.web import IMAGE_PREFIX, page_templates
from markupsafe import Markup

from travel import stay as rules
from travel import wording
from travel.booking import BookingRequest, Bookings
from travel.booking_store import CONFIRMED
from travel.cancellation import policy_of as booking_policy
from travel.catalogue import CITIES
from travel.http_api import BookingsDep
from travel.search import hotel_page, policy_of, search_hotels

templates = page_templates(
    Path(__file__).parent / "templates", service="travel", hotel_image=f"{IMAGE_PREFIX}hotel.svg"
)


def whole_words(text: str) -> Markup:
    """Text whose hyphenated words and dates ("non-refundable", "2026-12-06") never break at a hyphen."""
    parts: list[Markup | str] = []
    last = 0
    for match in re.finditer(r"\S+-\S+", text):
        parts += [text[last : match.start()], Markup('<span class="travel-nowrap">{}</span>').format(match.group(0))]
        last = match.end()
    parts.append(text[last:])
    return Markup("").join(parts)


templates.env.globals.update(terms=wording.for_page, status_label=lambda s: wording.status_label(s, _))
templates.env.filters["whole_words"] = whole_words
router = APIRouter(include_in_schema=False)

STYLESHEET = Path(__file__).parent / "static" / "travel.css"


def _page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    member = context.get("member")
    context.setdefault("member_name", member.display_name if member else None)
    return templates.TemplateResponse(request, name, {"cities": CITIES, **context}, status_code=status)


def _error(request: Request, exc: DomainError, **context: Any) -> HTMLResponse:
    return _page(
        request,
        "travel/error.html",
        status=exc.http_status,
        message=wording.page_error(exc.message),
        title=_("Sorry"),
        **context,
    )


async def _earn_previews(bookings: Bookings, member_id: str, totals: Iterable[int | None]) -> dict[int, int]:
    """What paying each total (travel's currency) would earn the member now: the kit's earn
    previews, every distinct total asked at once; totals points did not answer for in time are
    left out."""
    found = await bookings.earn.many(member_id, {(t, rules.CURRENCY) for t in totals if t})
    return {total: points for (total, _), points in found.items()}


@router.get("/static/travel.css")
async def stylesheet() -> FileResponse:
    return FileResponse(STYLESHEET, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})


@router.get("/", response_class=HTMLResponse)
async def search_page(request: Request, member: MaybeMember, bookings: BookingsDep) -> HTMLResponse:
    today = rules.hotel_today(bookings.clock.now())
    return _page(
        request,
        "travel/search.html",
        title=_("Find a hotel"),
        member=member,
        default_in=today.isoformat(),
        default_out=(today + timedelta(days=1)).isoformat(),
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
        stay = bookings.parse_stay(check_in, check_out, guests)
        results = await search_hotels(session, city, stay)
    except DomainError as exc:
        return _error(request, exc, member=member)
    earn: dict[int, int] = {}
    if member is not None:
        earn = await _earn_previews(bookings, member.member_id, (r.from_minor for r in results))
    return _page(
        request,
        "travel/results.html",
        title=_("Hotels in %(city)s") % {"city": _(CITIES[city])},
        city=city,
        stay=stay,
        results=results,
        earn_by_total=earn,
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
        stay = bookings.parse_stay(check_in, check_out, guests) if check_in and check_out else None
        page = await hotel_page(session, hotel_id, stay)
    except DomainError as exc:
        return _error(request, exc, member=member)
    earn: dict[int, int] = {}
    if member is not None and stay is not None:
        earn = await _earn_previews(bookings, member.member_id, (o.total_minor for o in page.offers))
    return _page(
        request,
        "travel/hotel.html",
        earn_by_total=earn,
        title=page.hotel.name,
        page=page,
        stay=stay,
        guests=guests,
        policies={p.id: policy_of(p) for p in page.plans},
        member=member,
    )


@router.get("/book", response_model=None)
async def book_link(request: Request, member: SignedInMember) -> Response:
    """An old or shared booking link: a GET never fills in a booking to pay; choose the room again."""
    hotel_id = request.query_params.get("hotel_id", "")
    flash(request, "info", "Choose your room and rate to book.")
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
        stay = bookings.parse_stay(check_in, check_out, guests)
        page = await hotel_page(session, hotel_id, stay)
        offer = next(
            (o for o in page.offers if o.room_type_id == room_type_id and o.rate_plan_id == rate_plan_id), None
        )
        if offer is None:
            raise NotFound("that room and rate are not offered for this stay")
    except DomainError as exc:
        return _error(request, exc, member=member)
    # Asked now, not remembered: what the booking page shows is the promise the booking then earns.
    promised = await bookings.earn.one(member.member_id, offer.total_minor, offer.currency)
    return _page(
        request,
        "travel/book.html",
        earn_points=promised,
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
    flash(request, "success", "Your booking is confirmed. Have a good trip!")
    return RedirectResponse(f"/trips/{booking.id}", status_code=303)


@router.get("/trips", response_class=HTMLResponse)
async def trips_page(request: Request, member: SignedInMember, bookings: BookingsDep) -> HTMLResponse:
    rows = await bookings.for_member(member.member_id)
    names = await bookings.names(rows)
    return _page(request, "travel/trips.html", title=_("My trips"), member=member, bookings=rows, names=names)


@router.get("/trips/{booking_id}", response_class=HTMLResponse)
async def trip_page(request: Request, member: SignedInMember, bookings: BookingsDep, booking_id: str) -> HTMLResponse:
    try:
        booking = await bookings.of_member(member.member_id, booking_id)
    except DomainError as exc:
        return _error(request, exc, member=member)
    return _page(
        request,
        "travel/trip.html",
        title=_("Your trip"),
        member=member,
        b=booking,
        names=await bookings.names([booking]),
        quote=bookings.quote_cancellation(booking) if booking.status == CONFIRMED else None,
        policy=booking_policy(booking),
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
        booking = await bookings.of_member(member.member_id, booking_id)
        quote_now = bookings.quote_cancellation(booking) if booking.status == CONFIRMED else None
        costs = quote_now is not None and (quote_now.penalty_minor > 0 or not booking.refundable)
        if costs and confirmed != "yes":
            # A cancellation that costs money (every non-refundable one) happens only after the
            # member saw what it costs and said yes.
            flash(request, "warning", "Please confirm the cancellation and its cost.")
            return RedirectResponse(f"/trips/{booking_id}", status_code=303)
        await bookings.cancel(member.member_id, booking_id)
    except DomainError as exc:
        return _error(request, exc, member=member)
    flash(request, "success", "Your booking is cancelled.")
    return RedirectResponse(f"/trips/{booking_id}", status_code=303)
