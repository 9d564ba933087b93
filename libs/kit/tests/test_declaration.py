"""Service declarations: what a bad one is told, what the set must satisfy, what is derived."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from kizuna.kit import declaration
from kizuna.kit.declaration import Declaration, DeclarationError, parse

SHOP: dict[str, Any] = {
    "name": "shop",
    "slot": 2,
    "label": "Shop",
    "scopes": {
        "member": {"shop:read": "See your orders"},
        "service": {"shop:admin": "Verify merchants"},
        "needs": ["points:spend", "fintech:pay"],
    },
    "web": {"sign_in": ["openid", "profile", "shop:read"]},
    "events": {"publishes": ["points.credit.requested"], "consumes": ["identity", "points.ledger.>"]},
    "grpc": {"calls": ["points", "fintech"]},
    "privacy": {"holds_member_data": True},
    "earning": {"label": "Shop", "rate_percent": 1.0},
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**SHOP, **changes}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (_with(name="Shop"), "name must be"),
        (_with(slot=-1), "slot must be"),
        (_with(slot=True), "slot must be"),
        (_with(slot=100), "slot must be"),
        (_with(colour="red"), "unknown field(s) colour"),
        (_with(scopes={"member": {"points:read": "x"}}), "defines only its own scopes"),
        (_with(scopes={"member": {"shop:read": ""}}), "plain-words description"),
        (_with(web={"sign_in": ["profile"]}), "must include openid"),
        (_with(events={"publishes": ["shop.order.paid"]}), "need no declaring"),
        (_with(events={"consumes": ["Points"]}), "not a valid name"),
        (_with(events={"consumes": ["points.>.x"]}), "not a valid name"),
        (_with(grpc={"calls": "points"}), "list of strings"),
        (_with(earning={"rate_percent": 101}), "rate_percent"),
        (_with(privacy={"holds_member_data": "yes"}), "true or false"),
    ],
)
def test_a_bad_declaration_is_refused_naming_the_field(data: dict[str, Any], says: str) -> None:
    with pytest.raises(DeclarationError, match=f"service.toml.*{re.escape(says)}"):
        parse(data)


def test_what_a_declaration_derives() -> None:
    d = parse(SHOP)
    assert (d.http_port, d.grpc_port, d.stream) == (8002, 50052, "SHOP")
    # A command carries its sender as the last token: the broker, not a header, says who sent it.
    assert d.publish_subjects == ["shop.>", "points.credit.requested.shop"]
    assert d.client_scopes == ["fintech:pay", "openid", "points:spend", "profile", "shop:read"]
    registration = declaration.client_registration(d, "https://shop.example/")
    assert registration["redirect_uris"] == ["https://shop.example/auth/callback"]
    assert registration["scopes"] == d.client_scopes and registration["first_party"] is True
    headless = parse({k: v for k, v in SHOP.items() if k != "web"})
    assert declaration.client_registration(headless, "https://x.example")["grant_types"] == ["client_credentials"]


def _set(*extra: dict[str, Any]) -> list[Declaration]:
    base = [
        {"name": "identity", "slot": 0, "scopes": {"service": {"identity:read": "Look up members"}}},
        {
            "name": "points",
            "slot": 1,
            "scopes": {"member": {"points:read": "See points", "points:spend": "Spend points"}},
            "privacy": {"holds_member_data": True},
        },
        {"name": "fintech", "slot": 4, "scopes": {"member": {"fintech:pay": "Pay"}}},
    ]
    return [parse(d) for d in [*base, *extra]]


def test_the_set_is_checked_as_a_whole() -> None:
    declaration.check(_set(SHOP))
    with pytest.raises(DeclarationError, match="slot 2 is taken by shop"):
        declaration.check(_set(SHOP, {"name": "books", "slot": 2}))
    with pytest.raises(DeclarationError, match="another service is also named"):
        declaration.check(_set(SHOP, _with(slot=9)))
    with pytest.raises(DeclarationError, match="calls 'travel', which no service declares"):
        declaration.check(_set(_with(grpc={"calls": ["travel"]})))
    with pytest.raises(DeclarationError, match=re.escape("consumes 'travel.booking.>'")):
        declaration.check(_set(_with(events={"consumes": ["travel.booking.>"]})))
    with pytest.raises(DeclarationError, match="scope 'travel:book' is defined by no service"):
        declaration.check(_set(_with(scopes={"needs": ["travel:book"]})))
    assert declaration.free_slot(_set(SHOP)) == 3


def test_identity_points_and_every_service_get_derived_configuration() -> None:
    decls = _set(SHOP)
    env = declaration.platform_env(
        decls, {d.name: f"https://{d.name}.example" for d in decls}, {d.name: f"{d.name}:5005" for d in decls}
    )
    assert json.loads(env["KIZUNA_EARNERS"]) == [{"service": "shop", "label": "Shop", "rate_percent": 1.0}]
    assert json.loads(env["KIZUNA_PRIVACY_SERVICES"]) == ["points", "shop"]
    scopes = json.loads(env["KIZUNA_SCOPES"])
    assert scopes["shop:read"] == {"description": "See your orders", "member": True, "service": "shop"}
    assert scopes["shop:admin"]["member"] is False and scopes["privacy:export"]["member"] is False
    assert env["SHOP_ADDR"] == "shop:5005" and json.loads(env["KIZUNA_LABELS"])["shop"] == "Shop"


def test_the_workspace_declares_every_service_folder() -> None:
    found = declaration.discover(Path(__file__))
    folders = {p.name for p in declaration.repo_root(Path(__file__)).joinpath("services").iterdir() if p.is_dir()}
    assert {d.name for d in found} == folders
    assert [d.slot for d in found] == sorted(d.slot for d in found)
