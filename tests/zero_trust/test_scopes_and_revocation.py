"""Each attack of "zero trust" (issue: scopes and revocation), run as the attacker would against the
running ecosystem: a third-party app registered through identity's admin API, which a member
allowed only `openid profile`, tries to move money and read what it was never granted; its own
client-credentials token tries to read any member's points; a replayed authorization code, a
sign-out everywhere and a password change must make points refuse the old token within 2 s."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from kizuna.identity.v1 import identity_pb2, identity_pb2_grpc
from kizuna.kit import declaration
from kizuna.kit.auth import call_metadata
from kizuna.points.v1 import points_pb2, points_pb2_grpc

from .zero_trust_support import (
    Ecosystem,
    authorize,
    code_from,
    csrf_of,
    exchange,
    first_party_token,
    query_of,
    sign_in,
    sign_up,
)

APP = "budget-app"
APP_SECRET = secrets.token_urlsafe(32)
APP_REDIRECT = "https://budget.example/callback"
# What identity's admin API registers for the app: everything a member could ever let it do.
APP_SCOPES = [
    "openid",
    "profile",
    "email",
    "points:read",
    "shop:read",
    "shop:order",
    "travel:read",
    "fintech:read",
    "fintech:pay",
]
REVOCATION_BUDGET_SECONDS = 2.0
measured: dict[str, float] = {}


@pytest.fixture(scope="module")
def app(ecosystem: Ecosystem) -> tuple[str, str]:
    """The attacker's app, registered like any partner through identity's admin API."""
    resp = httpx.post(
        f"{ecosystem.issuer}/admin/clients",
        headers={"authorization": f"Bearer {ecosystem.operator_token()}"},
        json={
            "client_id": APP,
            "client_secret": APP_SECRET,
            "name": "Budget App",
            "redirect_uris": [APP_REDIRECT],
            "scopes": APP_SCOPES,
        },
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["first_party"] is False
    return APP, APP_SECRET


def consented_token(eco: Ecosystem, b: httpx.Client, scope: str) -> dict[str, str]:
    """The member allows the app `scope` on identity's consent page; the app gets its tokens."""
    page = authorize(b, APP, APP_REDIRECT, scope)
    if page.status_code == 200:  # the consent page, naming each scope in plain words
        assert 'data-scope="openid"' in page.text
        form = {k: v for k, v in _hidden_fields(page.text)}
        page = b.post("/authorize", data={**form, "consent": "allow"})
    code = code_from(page)
    resp = exchange(eco, code, (APP, APP_SECRET), APP_REDIRECT)
    assert resp.status_code == 200, resp.text
    return {**resp.json(), "code": code}


def _hidden_fields(html: str) -> list[tuple[str, str]]:
    return re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', html)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def wait_refused(request: Callable[[], int], label: str) -> float:
    """Poll until the call is refused with 401; returns how long that took (fails past the budget)."""
    start = time.monotonic()
    while True:
        status = request()
        elapsed = time.monotonic() - start
        if status == 401:
            measured[label] = elapsed
            print(f"\n{label}: refused {elapsed * 1000:.0f} ms after the revocation")
            return elapsed
        assert status == 200, f"{label}: unexpected status {status}"
        assert elapsed < REVOCATION_BUDGET_SECONDS, f"{label}: still accepted {elapsed:.2f}s after the revocation"
        time.sleep(0.01)


# ---- scopes -----------------------------------------------------------------------------------


def test_an_app_allowed_only_openid_profile_can_neither_move_money_nor_read(
    ecosystem: Ecosystem, app: tuple[str, str]
) -> None:
    victim = sign_up(ecosystem, f"victim-{uuid.uuid4().hex[:8]}@example.com", name="Victim")
    payee = sign_up(ecosystem, f"payee-{uuid.uuid4().hex[:8]}@example.com", name="Payee")
    fintech = ecosystem.urls["fintech"]
    # The victim's own bank account at fintech, with money in it (through fintech's own sign-in).
    own = first_party_token(ecosystem, victim, "fintech", "openid fintech:read fintech:pay")
    payee_token = first_party_token(ecosystem, payee, "fintech", "openid fintech:read fintech:pay")
    payee_id = httpx.get(f"{ecosystem.issuer}/userinfo", headers=bearer(payee_token)).json()["sub"]
    for token in (own, payee_token):
        assert httpx.post(f"{fintech}/api/bank/account", headers=bearer(token)).status_code == 201
    top_up = {"amount_minor": 10_000, "idempotency_key": uuid.uuid4().hex}
    assert httpx.post(f"{fintech}/api/bank/top-up", json=top_up, headers=bearer(own)).status_code == 200
    card = httpx.post(
        f"{fintech}/api/card/apply",
        json={"annual_income_minor": 4_000_000, "idempotency_key": uuid.uuid4().hex},
        headers=bearer(own),
    )
    assert card.status_code == 201, card.text

    stolen = consented_token(ecosystem, victim, "openid profile")["access_token"]
    transfer = {"amount_minor": 4_242, "to_member_id": payee_id, "idempotency_key": uuid.uuid4().hex}
    attacks = [
        ("post", f"{fintech}/api/bank/transfers", transfer, "fintech:pay"),
        ("post", f"{fintech}/api/card/status", {"status": "blocked"}, "fintech:pay"),
        ("post", f"{fintech}/api/bank/top-up", {**top_up, "idempotency_key": uuid.uuid4().hex}, "fintech:pay"),
        ("get", f"{fintech}/api/bank", None, "fintech:read"),
        ("get", f"{fintech}/api/card", None, "fintech:read"),
        ("get", f"{fintech}/api/holdings", None, "fintech:read"),
        ("get", f"{ecosystem.urls['shop']}/api/orders", None, "shop:read"),
        ("get", f"{ecosystem.urls['shop']}/api/cart", None, "shop:read"),
        ("get", f"{ecosystem.urls['travel']}/api/bookings", None, "travel:read"),
        ("get", f"{ecosystem.urls['points']}/api/wallet", None, "points:read"),
    ]
    for method, url, body, scope in attacks:
        resp = httpx.request(method, url, json=body, headers=bearer(stolen))
        assert resp.status_code == 403, (url, resp.status_code, resp.text)
        assert resp.json()["error"] == "insufficient_scope", url
        assert resp.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{scope}"', url

    # Nothing moved: the balance is what the member put in, the card is still active.
    bank = httpx.get(f"{fintech}/api/bank", headers=bearer(own)).json()
    assert bank["balance_minor"] == 10_000
    assert httpx.get(f"{fintech}/api/bank", headers=bearer(payee_token)).json()["balance_minor"] == 0
    assert httpx.get(f"{fintech}/api/card", headers=bearer(own)).json()["status"] == "active"
    # The same routes work for a token that carries the scope (so the refusals above are the scopes').
    moved = httpx.post(f"{fintech}/api/bank/transfers", json={**transfer, "amount_minor": 1}, headers=bearer(own))
    assert moved.status_code == 200, moved.text


def test_an_app_reads_only_what_the_member_allowed_it(ecosystem: Ecosystem, app: tuple[str, str]) -> None:
    member = sign_up(ecosystem, f"reader-{uuid.uuid4().hex[:8]}@example.com", name="Reader")
    token = consented_token(ecosystem, member, "openid points:read")["access_token"]
    wallet = httpx.get(f"{ecosystem.urls['points']}/api/wallet", headers=bearer(token))
    assert wallet.status_code == 200, wallet.text
    # ... and not a byte more: no orders, no bookings, no bank.
    for url in (
        f"{ecosystem.urls['shop']}/api/orders",
        f"{ecosystem.urls['travel']}/api/bookings",
        f"{ecosystem.urls['fintech']}/api/bank",
    ):
        assert httpx.get(url, headers=bearer(token)).status_code == 403, url


def test_an_app_allowed_to_order_cannot_run_the_members_shop(ecosystem: Ecosystem, app: tuple[str, str]) -> None:
    member = sign_up(ecosystem, f"shopper-{uuid.uuid4().hex[:8]}@example.com")
    token = consented_token(ecosystem, member, "openid shop:read shop:order")["access_token"]
    shop = ecosystem.urls["shop"]
    assert httpx.get(f"{shop}/api/cart", headers=bearer(token)).status_code == 200
    for method, path in (("post", "/api/merchants"), ("get", "/api/merchants/mine")):
        resp = httpx.request(method, f"{shop}{path}", json={"name": "Sneaky Goods"}, headers=bearer(token))
        assert resp.status_code == 403, (path, resp.text)
        assert resp.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="shop:sell"'


def test_the_apps_own_client_credentials_cannot_read_any_members_points(
    ecosystem: Ecosystem, app: tuple[str, str]
) -> None:
    member = sign_up(ecosystem, f"target-{uuid.uuid4().hex[:8]}@example.com")
    own = first_party_token(ecosystem, member, "points", "openid points:read")
    member_id = httpx.get(f"{ecosystem.issuer}/userinfo", headers=bearer(own)).json()["sub"]

    def client_credentials(scope: str) -> httpx.Response:
        return httpx.post(
            f"{ecosystem.issuer}/token", auth=app, data={"grant_type": "client_credentials", "scope": scope}
        )

    for scope in ("points:read", "fintech:read", "shop:read", "travel:read", "points:credit", "identity:read"):
        refused = client_credentials(scope)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope", scope
    # Whatever token it can get (none of those scopes) reads no one's points over gRPC.
    bare = client_credentials("")
    assert bare.status_code == 200
    with grpc.insecure_channel(ecosystem.grpc["points"]) as channel:
        stub = points_pb2_grpc.PointsServiceStub(channel)
        for method, request in (
            (stub.GetBalance, points_pb2.GetBalanceRequest(member_id=member_id)),
            (stub.ListEntries, points_pb2.ListEntriesRequest(member_id=member_id)),
        ):
            with pytest.raises(grpc.RpcError) as refused_call:
                method(request, metadata=call_metadata(bare.json()["access_token"]), timeout=5)
            assert refused_call.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The member's own token does read their own balance.
        balance = stub.GetBalance(
            points_pb2.GetBalanceRequest(member_id=member_id), metadata=call_metadata(own), timeout=5
        )
        assert balance.total == 0


def test_get_member_without_profile_or_email_gets_neither(ecosystem: Ecosystem, app: tuple[str, str]) -> None:
    email = f"quiet-{uuid.uuid4().hex[:8]}@example.com"
    member = sign_up(ecosystem, email, name="Quiet")
    openid_only = consented_token(ecosystem, member, "openid")["access_token"]
    with_profile = consented_token(ecosystem, member, "openid profile")["access_token"]
    member_id = httpx.get(f"{ecosystem.issuer}/userinfo", headers=bearer(openid_only)).json()["sub"]
    with grpc.insecure_channel(ecosystem.grpc["identity"]) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)

        def get(token: str) -> identity_pb2.Member:
            request = identity_pb2.GetMemberRequest(member_id=member_id)
            member: identity_pb2.Member = stub.GetMember(request, metadata=call_metadata(token), timeout=5).member
            return member

        bare = get(openid_only)
        assert (bare.member_id, bare.display_name, bare.email) == (member_id, "", "")
        named = get(with_profile)
        assert (named.display_name, named.email) == ("Quiet", "")


# ---- revocation reaches points ----------------------------------------------------------------------


def test_a_replayed_code_revokes_the_grant_and_points_refuses_its_token_within_2s(
    ecosystem: Ecosystem, app: tuple[str, str]
) -> None:
    member = sign_up(ecosystem, f"replayed-{uuid.uuid4().hex[:8]}@example.com")
    issued = consented_token(ecosystem, member, "openid points:read")
    wallet = f"{ecosystem.urls['points']}/api/wallet"
    assert httpx.get(wallet, headers=bearer(issued["access_token"])).status_code == 200
    # Someone who intercepted the code replays it: identity revokes the whole grant.
    replay = exchange(ecosystem, issued["code"], app, APP_REDIRECT)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    wait_refused(lambda: httpx.get(wallet, headers=bearer(issued["access_token"])).status_code, "code replay")
    # Over gRPC too.
    with grpc.insecure_channel(ecosystem.grpc["points"]) as channel:
        stub = points_pb2_grpc.PointsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetBalance(
                points_pb2.GetBalanceRequest(member_id="mbr_00000000000000000000000000"),
                metadata=call_metadata(issued["access_token"]),
                timeout=5,
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_sign_out_everywhere_makes_points_refuse_the_token_within_2s(
    ecosystem: Ecosystem, app: tuple[str, str]
) -> None:
    member = sign_up(ecosystem, f"leaving-{uuid.uuid4().hex[:8]}@example.com")
    token = consented_token(ecosystem, member, "openid points:read")["access_token"]
    wallet = f"{ecosystem.urls['points']}/api/wallet"
    assert httpx.get(wallet, headers=bearer(token)).status_code == 200
    page = member.get("/account")
    ended = member.post("/account/sessions/end-all", data={"csrf_token": csrf_of(page.text)})
    assert ended.status_code == 303
    wait_refused(lambda: httpx.get(wallet, headers=bearer(token)).status_code, "sign-out everywhere")


def test_a_password_change_makes_points_refuse_other_sessions_tokens_within_2s(
    ecosystem: Ecosystem, app: tuple[str, str]
) -> None:
    email = f"changer-{uuid.uuid4().hex[:8]}@example.com"
    laptop = sign_up(ecosystem, email)
    phone = sign_in(ecosystem, email)
    # offline_access too: a token obtained with the old password must not outlive it.
    on_phone = consented_token(ecosystem, phone, "openid points:read")["access_token"]
    on_laptop = first_party_token(ecosystem, laptop, "points", "openid offline_access points:read")
    wallet = f"{ecosystem.urls['points']}/api/wallet"
    assert httpx.get(wallet, headers=bearer(on_phone)).status_code == 200
    page = laptop.get("/account")
    changed = laptop.post(
        "/account/password",
        data={
            "current_password": "correct horse battery staple",
            "new_password": "an entirely new passphrase",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert "password is changed" in changed.text
    wait_refused(lambda: httpx.get(wallet, headers=bearer(on_phone)).status_code, "password change")
    # The session that changed the password keeps working.
    assert httpx.get(wallet, headers=bearer(on_laptop)).status_code == 200


def test_consent_page_names_the_scopes_in_plain_words(ecosystem: Ecosystem, app: tuple[str, str]) -> None:
    member = sign_up(ecosystem, f"careful-{uuid.uuid4().hex[:8]}@example.com")
    page = authorize(member, APP, APP_REDIRECT, "openid profile fintech:pay")
    assert page.status_code == 200
    assert "See your display name" in page.text
    assert 'data-scope="fintech:pay"' in page.text
    denied = member.post("/authorize", data={**dict(_hidden_fields(page.text)), "consent": "deny"})
    assert query_of(denied.headers["location"])["error"] == "access_denied"


def test_a_removed_partners_own_tokens_are_refused_within_2s(ecosystem: Ecosystem) -> None:
    admin = {"authorization": f"Bearer {ecosystem.operator_token()}"}
    partner, secret = "corner-cafe", secrets.token_urlsafe(32)
    created = httpx.post(
        f"{ecosystem.issuer}/admin/clients",
        headers=admin,
        json={
            "client_id": partner,
            "client_secret": secret,
            "grant_types": ["client_credentials"],
            "scopes": ["fintech:pay"],
        },
    )
    assert created.status_code == 201, created.text
    token = httpx.post(
        f"{ecosystem.issuer}/token",
        auth=(partner, secret),
        data={"grant_type": "client_credentials", "scope": "fintech:pay"},
    ).json()["access_token"]
    charge = {"card_number": "4000000000000002", "amount_minor": 500, "idempotency_key": uuid.uuid4().hex}
    url = f"{ecosystem.urls['fintech']}/merchant/v1/authorizations"

    def status() -> int:
        code = httpx.post(url, json=charge, headers=bearer(token)).status_code
        return 200 if code != 401 else 401  # a refused card is still an accepted token

    assert status() == 200
    assert httpx.delete(f"{ecosystem.issuer}/admin/clients/{partner}", headers=admin).status_code == 204
    wait_refused(status, "partner removed")


def _grpc_methods() -> list[tuple[str, str, Any, Any]]:
    """(service, method path, request type, response type) of every RPC in the contracts."""
    import importlib
    import importlib.util

    from google.protobuf import symbol_database

    found = []
    for name in (d.name for d in declaration.discover()):
        if importlib.util.find_spec(f"kizuna.{name}") is None:
            continue  # a service with no gRPC contract of its own
        module = importlib.import_module(f"kizuna.{name}.v1.{name}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                db = symbol_database.Default()
                found.append(
                    (
                        name,
                        f"/{service.full_name}/{method.name}",
                        db.GetSymbol(method.input_type.full_name),
                        db.GetSymbol(method.output_type.full_name),
                    )
                )
    return found


def test_no_grpc_method_answers_an_app_the_member_allowed_only_openid_profile(
    ecosystem: Ecosystem, app: tuple[str, str]
) -> None:
    member = sign_up(ecosystem, f"grpc-{uuid.uuid4().hex[:8]}@example.com")
    stolen = consented_token(ecosystem, member, "openid profile")["access_token"]
    member_id = httpx.get(f"{ecosystem.issuer}/userinfo", headers=bearer(stolen)).json()["sub"]
    # GetMember answers a member's own record (the name under `profile`): tested on its own above.
    methods = [m for m in _grpc_methods() if m[1] != "/kizuna.identity.v1.IdentityService/GetMember"]
    assert len(methods) >= 15
    answered = []
    for service, path, request_type, response_type in methods:
        request = request_type()
        if "member_id" in request_type.DESCRIPTOR.fields_by_name:
            request.member_id = member_id
        with grpc.insecure_channel(ecosystem.grpc[service]) as channel:
            call = channel.unary_unary(
                path, request_serializer=request_type.SerializeToString, response_deserializer=response_type.FromString
            )
            try:
                call(request, metadata=call_metadata(stolen), timeout=5)
                answered.append((path, "OK"))
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    answered.append((path, exc.code().name))
    assert answered == [], f"methods that did not refuse the token before doing anything: {answered}"


def test_an_erased_members_tokens_are_refused_by_points_within_2s(ecosystem: Ecosystem, app: tuple[str, str]) -> None:
    member = sign_up(ecosystem, f"leaving-for-good-{uuid.uuid4().hex[:8]}@example.com")
    # An app's grant and points' own grant with offline_access (which outlives sign-outs): erasure ends both.
    token = consented_token(ecosystem, member, "openid points:read")["access_token"]
    own = first_party_token(ecosystem, member, "points", "openid offline_access points:read")
    wallet = f"{ecosystem.urls['points']}/api/wallet"
    assert httpx.get(wallet, headers=bearer(own)).status_code == 200
    page = member.get("/account")
    deleted = member.post(
        "/account/delete",
        data={"password": "correct horse battery staple", "confirm": "yes", "csrf_token": csrf_of(page.text)},
    )
    assert deleted.status_code in (200, 303), deleted.text[:300]
    wait_refused(lambda: httpx.get(wallet, headers=bearer(own)).status_code, "erasure")
    assert httpx.get(wallet, headers=bearer(token)).status_code == 401
