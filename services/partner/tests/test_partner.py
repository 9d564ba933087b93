"""Partner stores against the REAL points service: a partner applies and is approved, its till
earns (pending, then granted after the return window) and spends with the member's code; a
replayed code is refused; a till's retry changes nothing; partial returns; settlement equals the
ledger; bad input is refused and changes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from kizuna.kit.testing import ServiceProcess, wait_until
from kizuna.kit.testing_stack import Ecosystem, TestMember
from kizuna.points.v1 import points_pb2

CARD = "openid profile partner:read points:read points:spend"


class Till:
    """A partner's till, as the POS simulator plays it."""

    def __init__(self, url: str, partner_id: str, secret: str, store_id: str) -> None:
        self.url, self.auth, self.store = url, (partner_id, secret), store_id

    async def call(self, path: str, **body: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, auth=self.auth, timeout=30) as http:
            return await http.post(path, json={"store_id": self.store, "terminal": "till-1", **body})

    async def statement(self, month: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, auth=self.auth, timeout=30) as http:
            response = await http.get("/api/pos/statement", params={"month": month})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


async def _admin(ecosystem: Ecosystem, service: ServiceProcess, method: str, path: str, **body: Any) -> Any:
    token = ecosystem.issuer.service_token("ops", "partner:admin")
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        response = await http.request(method, path, json=body or None, headers={"authorization": f"Bearer {token}"})
    assert response.status_code < 300, response.text
    return response.json()


async def _partner(ecosystem: Ecosystem, service: ServiceProcess, *, rate_bp: int = 100, window_days: int = 0) -> Till:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        applied = await http.post(
            "/api/partners/apply", json={"name": f"Drugstore {uuid.uuid4().hex[:4]}", "contact_email": "a@b.example"}
        )
    assert applied.status_code == 201, applied.text
    partner_id = applied.json()["id"]
    approved = await _admin(
        ecosystem,
        service,
        "POST",
        f"/api/admin/partners/{partner_id}/approve",
        earn_rate_bp=rate_bp,
        return_window_days=window_days,
    )
    store = await _admin(ecosystem, service, "POST", f"/api/admin/partners/{partner_id}/stores", name="Shibuya")
    return Till(service.url, partner_id, approved["secret"], store["id"])


async def _card(service: ServiceProcess, member: TestMember) -> str:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        response = await http.post("/api/card", headers={"authorization": f"Bearer {member.token_for(CARD)}"})
    assert response.status_code == 201, response.text
    code: str = response.json()["code"]
    return code


async def _credits(ecosystem: Ecosystem, member_id: str) -> int:
    return sum(
        e.amount
        for e in await ecosystem.entries(member_id)
        if e.source_service == "partner" and e.kind in (points_pb2.ENTRY_KIND_CREDIT, points_pb2.ENTRY_KIND_CLAWBACK)
    )


def _month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


async def test_earn_is_pending_then_granted_after_the_window(
    ecosystem: Ecosystem, partner_service: ServiceProcess
) -> None:
    member = await ecosystem.member(points=0, card=False)
    code = await _card(partner_service, member)
    waiting = await _partner(ecosystem, partner_service, window_days=14)
    pending = await waiting.call("/api/pos/earn", receipt="r1", code=code, amount_minor=5_000)
    assert pending.status_code == 200, pending.text
    assert pending.json()["status"] == "pending"
    # Nothing about the member comes back to the till.
    assert not {"member_id", "card", "code"} & set(pending.json())

    async def earning() -> bool:
        return (await ecosystem.balance(member.id)).earning == 50

    await wait_until(earning, timeout=30)
    assert (await ecosystem.balance(member.id)).total == 0

    # A partner with no return window: granted at once by the grant job, at its contract's rate.
    generous = await _partner(ecosystem, partner_service, rate_bp=300, window_days=0)
    code2 = await _card(partner_service, member)  # a new card: the first card's codes stop working
    granted = await generous.call("/api/pos/earn", receipt="r1", code=code2, amount_minor=10_000)
    assert granted.status_code == 200, granted.text

    async def credited() -> bool:
        return (await ecosystem.balance(member.id)).total == 300  # 1% base + 2% the partner's bonus

    await wait_until(credited, timeout=30)


async def test_spend_with_the_code_once_and_a_till_retry_changes_nothing(
    ecosystem: Ecosystem, partner_service: ServiceProcess
) -> None:
    member = await ecosystem.member(points=1_000, card=False)
    till = await _partner(ecosystem, partner_service)
    code = await _card(partner_service, member)
    paid = await till.call("/api/pos/spend", receipt="s1", code=code, points=300)
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "completed"
    # The response was lost; the till sends the same again: the same sale, nothing spent twice.
    again = await till.call("/api/pos/spend", receipt="s1", code=code, points=300)
    assert again.status_code == 200 and again.json()["id"] == paid.json()["id"]
    balance = await ecosystem.balance(member.id)
    assert (balance.total, balance.pending) == (700, 0)

    # The same code for another receipt, or at another partner's store, is refused.
    replay = await till.call("/api/pos/spend", receipt="s2", code=code, points=10)
    assert replay.status_code == 403 and replay.json()["error"] == "code_refused", replay.text
    other = await _partner(ecosystem, partner_service)
    elsewhere = await other.call("/api/pos/spend", receipt="s1", code=code, points=10)
    assert elsewhere.status_code == 403, elsewhere.text
    # The same receipt with another amount is a conflict, not a second payment.
    changed = await till.call("/api/pos/spend", receipt="s1", code=code, points=301)
    assert changed.status_code == 409, changed.text
    assert (await ecosystem.balance(member.id)).total == 700


async def test_partial_returns_take_back_in_proportion(ecosystem: Ecosystem, partner_service: ServiceProcess) -> None:
    member = await ecosystem.member(points=1_000, card=False)
    till = await _partner(ecosystem, partner_service, window_days=0)
    code = await _card(partner_service, member)
    # One receipt: 500 points and 10,000 yen paid (the money earns 100 points).
    assert (await till.call("/api/pos/spend", receipt="t1", code=code, points=500)).status_code == 200
    assert (await till.call("/api/pos/earn", receipt="t1", code=code, amount_minor=10_000)).status_code == 200

    async def settled(total: int) -> None:
        async def reached() -> bool:
            return (await ecosystem.balance(member.id)).total == total

        await wait_until(reached, timeout=30)

    await settled(1_000 - 500 + 100)
    # 40% of the money and 200 of the points come back.
    back = await till.call("/api/pos/returns", receipt="t1", return_receipt="x1", amount_minor=4_000, points=200)
    assert back.status_code == 200, back.text
    await settled(600 + 200 - 40)
    # The till retries the return: nothing changes twice.
    again = await till.call("/api/pos/returns", receipt="t1", return_receipt="x1", amount_minor=4_000, points=200)
    assert again.status_code == 200 and [r["id"] for r in again.json()] == [r["id"] for r in back.json()]
    too_much = await till.call("/api/pos/returns", receipt="t1", return_receipt="x2", amount_minor=6_001)
    assert too_much.status_code == 400, too_much.text
    await settled(760)

    # Settlement: what the ledger says the partner issued and what its tills redeemed.
    statement = await till.statement(_month())

    async def issued_matches() -> bool:
        issued: int = (await till.statement(_month()))["points_issued"]
        return issued == await _credits(ecosystem, member.id) == 60

    await wait_until(issued_matches, timeout=30)
    assert statement["points_redeemed"] == 300
    points_admin = ecosystem.issuer.service_token("ops", "points:admin")
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    async with httpx.AsyncClient(base_url=ecosystem.points.url, timeout=30) as http:
        ledger = await http.get(
            "/admin/settlement",
            params={"start": start.isoformat(), "end": datetime.now(UTC).isoformat()},
            headers={"authorization": f"Bearer {points_admin}"},
        )
    assert ledger.status_code == 200, ledger.text
    line = next(s for s in ledger.json()["services"] if s["service"] == "partner")
    everyone = await _admin(ecosystem, partner_service, "GET", f"/api/admin/settlement?month={_month()}")
    # Every partner's statement together is the ledger's account for the partner service.
    assert sum(s["points_issued"] for s in everyone) == line["net_issued"]
    assert sum(s["points_redeemed"] for s in everyone) == line["net_redeemed"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/pos/earn", {"receipt": "b1", "code": "KZ1-000000000000-00000000", "amount_minor": 100}, 403),
        ("/api/pos/earn", {"receipt": "b2", "code": "not a code", "amount_minor": 100}, 403),
        ("/api/pos/earn", {"receipt": "b3", "code": "{code}", "amount_minor": 0}, 422),
        ("/api/pos/earn", {"receipt": "b4", "code": "{code}", "amount_minor": 2**63}, 400),
        ("/api/pos/earn", {"receipt": "b5", "code": "{code}", "amount_minor": 10_000_001}, 400),
        ("/api/pos/earn", {"receipt": "b6", "code": "{code}", "amount_minor": 100, "currency": "USD"}, 400),
        ("/api/pos/spend", {"receipt": "b7", "code": "{code}", "points": 5_000}, 409),
        ("/api/pos/spend", {"receipt": "b8", "code": "{code}", "points": -5}, 422),
        ("/api/pos/earn", {"receipt": "has space", "code": "{code}", "amount_minor": 100}, 400),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    ecosystem: Ecosystem, partner_service: ServiceProcess, path: str, body: dict[str, Any], status: int
) -> None:
    member = await ecosystem.member(points=100, card=False)
    till = await _partner(ecosystem, partner_service)
    code = await _card(partner_service, member)
    response = await till.call(path, **{k: (code if v == "{code}" else v) for k, v in body.items()})
    assert response.status_code == status, response.text
    balance = await ecosystem.balance(member.id)
    assert (balance.total, balance.pending, balance.earning) == (100, 0, 0)


async def test_a_till_is_its_partners_and_a_revoked_card_stops(
    ecosystem: Ecosystem, partner_service: ServiceProcess
) -> None:
    member = await ecosystem.member(points=100, card=False)
    mine, theirs = await _partner(ecosystem, partner_service), await _partner(ecosystem, partner_service)
    code = await _card(partner_service, member)
    foreign = Till(mine.url, mine.auth[0], mine.auth[1], theirs.store)
    assert (await foreign.call("/api/pos/earn", receipt="f1", code=code, amount_minor=100)).status_code == 404
    wrong = Till(mine.url, mine.auth[0], "not-the-secret", mine.store)
    assert (await wrong.call("/api/pos/earn", receipt="f2", code=code, amount_minor=100)).status_code == 401
    async with httpx.AsyncClient(base_url=partner_service.url, timeout=30) as http:
        revoked = await http.delete("/api/card", headers={"authorization": f"Bearer {member.token_for(CARD)}"})
    assert revoked.status_code == 204
    assert (await mine.call("/api/pos/earn", receipt="f3", code=code, amount_minor=100)).status_code == 403


async def test_the_till_over_grpc(ecosystem: Ecosystem, partner_service: ServiceProcess) -> None:
    import base64

    import grpc
    from kizuna.common.v1.common_pb2 import Money
    from kizuna.partner.v1 import partner_pb2, partner_pb2_grpc

    member = await ecosystem.member(points=500, card=False)
    till = await _partner(ecosystem, partner_service, window_days=14)
    code = await _card(partner_service, member)
    basic = base64.b64encode(f"{till.auth[0]}:{till.auth[1]}".encode()).decode()
    own = (("authorization", f"Basic {basic}"),)
    where = partner_pb2.Till(store_id=till.store, terminal="till-9")
    async with grpc.aio.insecure_channel(partner_service.grpc_address) as channel:
        pos = partner_pb2_grpc.PosServiceStub(channel)
        earn = partner_pb2.EarnRequest(
            till=where, code=code, amount=Money(amount_minor=2_000, currency="JPY"), idempotency_key="g1"
        )
        first = await pos.Earn(earn, metadata=own, timeout=30)
        again = await pos.Earn(earn, metadata=own, timeout=30)  # a retry after a dropped response
        assert first.sale.status == "pending" and again.sale.sale_id == first.sale.sale_id
        spent = await pos.Spend(
            partner_pb2.SpendRequest(till=where, code=code, points=200, idempotency_key="g1"), metadata=own, timeout=30
        )
        assert spent.sale.status == "completed"
        back = await pos.TakeReturn(
            partner_pb2.TakeReturnRequest(till=where, receipt="g1", idempotency_key="gr1", points=50),
            metadata=own,
            timeout=30,
        )
        assert len(back.return_ids) == 1

        async def status_of(call: Any) -> grpc.StatusCode:
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        # No credentials, a wrong secret, or a Kizuna member's token: not a partner's till.
        assert await status_of(pos.Earn(earn, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
        wrong = base64.b64encode(f"{till.auth[0]}:nope".encode()).decode()
        assert (
            await status_of(pos.Earn(earn, metadata=(("authorization", f"Basic {wrong}"),), timeout=30))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        bearer = (("authorization", f"Bearer {member.token}"),)
        assert await status_of(pos.Earn(earn, metadata=bearer, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
        # The code, used on receipt g1, is refused for another receipt.
        other = partner_pb2.EarnRequest(
            till=where, code=code, amount=Money(amount_minor=100, currency="JPY"), idempotency_key="g2"
        )
        assert await status_of(pos.Earn(other, metadata=own, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED
    balance = await ecosystem.balance(member.id)
    assert (balance.total, balance.pending) == (500 - 200 + 50, 0)


async def test_the_partners_statement_page(ecosystem: Ecosystem, partner_service: ServiceProcess) -> None:
    member = await ecosystem.member(points=400, card=False)
    till = await _partner(ecosystem, partner_service)
    code = await _card(partner_service, member)
    assert (await till.call("/api/pos/spend", receipt="p1", code=code, points=120)).status_code == 200
    async with httpx.AsyncClient(base_url=partner_service.url, timeout=30) as http:
        anonymous = await http.get("/statement")
        page = await http.get("/statement", params={"month": _month()}, auth=till.auth)
        wrong = await http.get("/statement", auth=(till.auth[0], "not-it"))
        japanese = {"accept-language": "ja"}
        bad_month = await http.get("/statement", params={"month": "13/2026"}, auth=till.auth, headers=japanese)
        explained = await http.get("/statement", auth=till.auth, headers=japanese)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Basic")
    assert wrong.status_code == 401
    assert page.status_code == 200, page.text
    assert "Shibuya" in page.text and "120 pt" in page.text, page.text
    assert bad_month.status_code == 303  # back to this month, with the error as a message
    assert "月は 2026-12 のように入力してください。" in explained.text, explained.text


def _basic(raw: bytes) -> str:
    import base64

    return "Basic " + base64.b64encode(raw).decode()


# Malformed till credentials: every one is refused the same way over REST and gRPC.
MALFORMED = {
    "another scheme": "Bearer abc.def.ghi",
    "bad base64": "Basic !!not*base64!!",
    "no colon": _basic(b"ptn_0123456789abcdef"),
    "empty secret": _basic(b"ptn_0123456789abcdef:"),
    "over-long": _basic(b"ptn_0123456789abcdef:" + b"s" * 3000),
    "not UTF-8": _basic(b"ptn_\xff\xfe:secret"),
    "a control character": _basic(b"ptn_0123456789abcdef\x00:secret"),
}


@pytest.mark.parametrize("header", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_till_credentials_are_refused_alike_over_rest_and_grpc(
    ecosystem: Ecosystem, partner_service: ServiceProcess, header: str
) -> None:
    import grpc
    from kizuna.common.v1.common_pb2 import Money
    from kizuna.partner.v1 import partner_pb2, partner_pb2_grpc
    from partner.partners import TILL_CREDENTIALS

    body = {"store_id": "sto_x", "terminal": "t", "receipt": "r", "code": "KZ1-x", "amount_minor": 100}
    async with httpx.AsyncClient(base_url=partner_service.url, timeout=30) as http:
        rest = await http.post("/api/pos/earn", json=body, headers={"authorization": header})
        statement = await http.get("/api/pos/statement", params={"month": _month()}, headers={"authorization": header})
    for answer in (rest, statement):
        assert answer.status_code == 401, answer.text
        assert answer.json() == {"error": "unauthenticated", "message": TILL_CREDENTIALS}
        assert answer.headers["www-authenticate"].startswith("Basic realm=")
    earn = partner_pb2.EarnRequest(
        till=partner_pb2.Till(store_id="sto_x", terminal="t"),
        code="KZ1-x",
        amount=Money(amount_minor=100, currency="JPY"),
        idempotency_key="r",
    )
    async with grpc.aio.insecure_channel(partner_service.grpc_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await partner_pb2_grpc.PosServiceStub(channel).Earn(earn, metadata=(("authorization", header),), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == TILL_CREDENTIALS


async def test_a_header_beyond_ascii_is_refused_not_an_error(partner_service: ServiceProcess) -> None:
    # HTTP carries header bytes as Latin-1 text; gRPC metadata cannot hold them at all.
    from partner.partners import TILL_CREDENTIALS

    async with httpx.AsyncClient(base_url=partner_service.url, timeout=30) as http:
        answer = await http.get(
            "/api/pos/statement", params={"month": _month()}, headers={b"authorization": b"Basic \xff\xfe\xfd"}
        )
    assert answer.status_code == 401 and answer.json()["message"] == TILL_CREDENTIALS


async def test_a_wrong_secret_is_challenged_for_basic_credentials(partner_service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=partner_service.url, timeout=30) as http:
        wrong = await http.get(
            "/api/pos/statement", params={"month": _month()}, auth=("ptn_0123456789abcdef", "not-the-secret")
        )
    assert wrong.status_code == 401 and wrong.json()["message"] == "unknown partner or wrong secret"
    assert wrong.headers["www-authenticate"] == 'Basic realm="Kizuna partner", charset="UTF-8"'


async def test_enrolling_needs_both_scopes_and_a_missing_one_is_forbidden(
    ecosystem: Ecosystem, partner_service: ServiceProcess
) -> None:
    member = await ecosystem.member(points=0, card=False)
    async with httpx.AsyncClient(base_url=partner_service.url, timeout=30) as http:
        for scope in ("openid points:spend", "openid partner:read"):
            refused = await http.post("/api/card", headers={"authorization": f"Bearer {member.token_for(scope)}"})
            assert refused.status_code == 403, (scope, refused.text)
        anonymous = await http.post("/api/card")
        assert anonymous.status_code == 401
        assert (
            await http.get("/api/card", headers={"authorization": f"Bearer {member.token_for(CARD)}"})
        ).status_code == 404
