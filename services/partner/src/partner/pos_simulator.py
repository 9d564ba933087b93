"""`python -m partner pos ...`: a till to play against a running `make up`.

    python -m partner pos --partner ptn_… --secret … earn   --store sto_… --code KZ1-… --amount 1200
    python -m partner pos --partner ptn_… --secret … spend  --store sto_… --code KZ1-… --points 300
    python -m partner pos --partner ptn_… --secret … return --store sto_… --receipt r1 --amount 600
    python -m partner pos --partner ptn_… --secret … statement --month 2026-12

The till's terminal is `--terminal` (default "till-1"); each sale gets a new receipt number unless
`--receipt` names one (send the same again to see a retry change nothing).
"""

from __future__ import annotations

import argparse
import json
import uuid

import httpx

from partner.settings import Settings


def command(settings: Settings, args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m partner pos", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=settings.base_url, help="partner's HTTP address")
    parser.add_argument("--partner", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--terminal", default="till-1")
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("earn", "spend", "return"):
        p = sub.add_parser(name)
        p.add_argument("--store", required=True)
        p.add_argument("--receipt", default="")
        if name != "return":
            p.add_argument("--code", required=True, help="what the member's card page shows (KZ1-…)")
        if name in ("earn", "return"):
            p.add_argument("--amount", type=int, default=0, help="money in yen")
        if name in ("spend", "return"):
            p.add_argument("--points", type=int, default=0)
        if name == "return":
            p.add_argument("--return-receipt", default="")
    statement = sub.add_parser("statement")
    statement.add_argument("--month", required=True)
    ns = parser.parse_args(args)

    auth = (ns.partner, ns.secret)
    with httpx.Client(base_url=ns.url, auth=auth, timeout=15) as http:
        if ns.action == "statement":
            response = http.get("/api/pos/statement", params={"month": ns.month})
        else:
            body: dict[str, object] = {
                "store_id": ns.store,
                "terminal": ns.terminal,
                "receipt": ns.receipt or f"r-{uuid.uuid4().hex[:10]}",
            }
            if ns.action == "earn":
                body.update(code=ns.code, amount_minor=ns.amount)
                response = http.post("/api/pos/earn", json=body)
            elif ns.action == "spend":
                body.update(code=ns.code, points=ns.points)
                response = http.post("/api/pos/spend", json=body)
            else:
                body.update(
                    return_receipt=ns.return_receipt or f"ret-{uuid.uuid4().hex[:10]}",
                    amount_minor=ns.amount,
                    points=ns.points,
                )
                response = http.post("/api/pos/returns", json=body)
    print(json.dumps(response.json(), indent=2, ensure_ascii=False))
    return 0 if response.status_code < 400 else 1
