"""The kit's flash messages: signed, so a cookie someone else wrote shows nothing; bounded; only
the four kinds the layout styles; and said in the language of the page that shows them, not of the
form that queued them. (Shown once and never taken from the URL: the shop, travel and
fintech page tests check that through the running services.)"""

from __future__ import annotations

import html
import re
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from kizuna.kit import flash, i18n
from kizuna.kit.web import PageMiddleware, format_date, format_money, format_points, page_templates

SECRET = "a-service-secret"


def test_a_message_round_trips_only_under_the_services_key() -> None:
    value = flash.serializer(SECRET).dumps([["error", "Your card was declined."]])
    assert flash.decode(value, SECRET) == [flash.Flash("error", "Your card was declined.")]
    assert flash.decode(value, "another-service") == []
    forged = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    assert flash.decode(forged, SECRET) == []
    assert flash.decode("not a cookie", SECRET) == []
    assert flash.decode(value, None) == []


def test_only_known_kinds_and_a_bounded_number_are_shown() -> None:
    many = [["success", f"message {i}"] for i in range(20)]
    assert len(flash.decode(flash.serializer(SECRET).dumps(many), SECRET)) == flash.MAX_MESSAGES
    odd = flash.serializer(SECRET).dumps([["script", "x"], ["info", 3], ["info", "ok"], "junk"])
    assert flash.decode(odd, SECRET) == [flash.Flash("info", "ok")]


def test_money_points_and_dates_read_as_people_write_them() -> None:
    assert format_money(17_536) == "¥17,536" and format_money(-17_536) == "-¥17,536"
    assert format_money(1250, "USD") == "$12.50" and format_money(5, "CHF") == "0.05 CHF"
    assert format_points(1200) == "1,200 pt" and format_points(-300, signed=True) == "-300 pt"
    assert format_points(5, signed=True) == "+5 pt"
    assert format_date("2026-12-06") == "6 Dec 2026" and format_date("2026-12-06", "ja") == "2026年12月6日"


def test_a_handler_queues_messages_of_a_known_kind() -> None:
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    flash.flash(request, "success", "Saved.")
    assert flash.outgoing(request.scope) == [["success", "Saved."]]
    assert flash.flashes(request) == [flash.Flash("success", "Saved.")] and flash.consumed(request.scope)
    with pytest.raises(ValueError, match="flash kind"):
        flash.flash(request, "loud", "x")  # type: ignore[arg-type]  # An unknown kind, on purpose.


def _app_that_flashes() -> FastAPI:
    """A page app as the kit's Service builds one (PageMiddleware, the kit layout), with the shop's
    catalogue: a form queues a message and redirects; a page shows it."""
    import shop

    i18n.load(Path(shop.__file__).parent / "locale")
    app = FastAPI()
    app.state.runtime = SimpleNamespace(state={"flash_secret": SECRET})
    app.add_middleware(PageMiddleware, service="ui")

    @app.post("/ship")
    async def ship(request: Request) -> RedirectResponse:
        flash.flash(request, "success", "Order %(order)s is %(status)s.", order="o-7", status=flash.Word("shipped"))
        flash.flash(request, "info", "Your cart is updated.")
        return RedirectResponse("/hop", status_code=303)

    @app.get("/hop")
    async def hop(request: Request) -> RedirectResponse:  # shows nothing: the messages wait, one joins
        flash.flash(request, "warning", "Try again")
        return RedirectResponse("/page", status_code=303)

    @app.get("/page")
    async def page(request: Request) -> Response:
        return page_templates().TemplateResponse(
            request, "kizuna/unavailable.html", {"title": "", "message": "", "retry_url": "/"}
        )

    return app


@pytest.mark.parametrize(
    ("sent_in", "read_in", "expected"),
    [
        ("ja", "en", ["Order o-7 is shipped.", "Your cart is updated.", "Try again"]),
        ("en", "ja", ["注文o-7は発送済みになりました。", "カートを更新しました。", "もう一度試す"]),
    ],
)
async def test_a_queued_message_is_shown_in_the_language_of_the_page_that_shows_it(
    sent_in: str, read_in: str, expected: list[str]
) -> None:
    transport = httpx.ASGITransport(app=_app_that_flashes())
    async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as client:
        client.cookies.set(i18n.COOKIE, sent_in)
        sent = await client.post("/ship")
        assert sent.status_code == 303 and "kz_flash_ui" in sent.cookies
        assert (await client.get("/hop")).status_code == 303
        # The member switches language before the next page.
        client.cookies.set(i18n.COOKIE, read_in)
        shown = await client.get("/page")
        assert shown.status_code == 200
        texts = re.findall(r'data-flash="\w+">([^<]*)</p>', shown.text)
        assert [html.unescape(t) for t in texts] == expected
        # Shown once.
        again = await client.get("/page")
        assert re.findall(r'data-flash="\w+">([^<]*)</p>', again.text) == []


def test_a_message_keeps_its_parameters_in_the_cookie_and_a_forged_parameter_shows_nothing() -> None:
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    flash.flash(request, "success", "%(title)s is on sale.", title="Green tea")
    stored = flash.outgoing(request.scope)
    assert stored == [["success", "%(title)s is on sale.", {"title": "Green tea"}, []]]
    assert [f.shown().text for f in flash.decode(flash.serializer(SECRET).dumps(stored), SECRET)] == [
        "Green tea is on sale."
    ]
    odd = [["info", "x %(a)s", {"a": ["list"]}, []], ["info", "y", {"a": 1}, ["b"]], ["info", "z", "p", []]]
    assert flash.decode(flash.serializer(SECRET).dumps(odd), SECRET) == []
    with pytest.raises(ValueError, match="does not take"):
        flash.flash(request, "info", "%(title)s is on sale.", name="x")
