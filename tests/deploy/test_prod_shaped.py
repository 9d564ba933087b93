"""Kizuna as the prod overlay runs it, on this machine, with a real browser.

Every service starts with the environment the rendered prod manifests give its container (the
init container migrates first); only what must differ on one machine is replaced (see
`prod_shaped.LOCAL_OVERRIDES`) and every in-cluster address (`http://identity:8000`,
`points:50051`, `tls://nats:4222`) becomes a loopback port, scheme and path as rendered. The
public URLs stay `https://id.<domain>`, `https://shop.<domain>`...: a local TLS ingress serves
them and only Chromium resolves them (`--host-resolver-rules`), so any server-to-server call that
uses a public URL fails here as it would in a pod. NATS speaks TLS, verified against a test CA,
with each service's own user.

The member signs up, sees the live balance in every service's header, signs out once and is
signed out everywhere (identity's back-channel logout reaches every service in-cluster), then
downloads their data with every service's part.
"""

from __future__ import annotations

import io
import json
import re
import socket
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from kizuna.kit.auth import call_metadata
from kizuna.kit.testing import PostgresServer
from kizuna.points.v1 import points_pb2, points_pb2_grpc
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect, sync_playwright

from .deploy_support import BY_NAME, DEPLOY, ISSUER, LEDGER, kustomize
from .prod_shaped import CHROMIUM_ARGS, ProdStack, prod_stack

pytestmark = pytest.mark.long(70)

PASSWORD = "correct horse battery"
CREDITED = 1234
# A service credits the welcome points, as a service with `points:credit` may.
CREDITOR = next(d.name for d in BY_NAME.values() if "points:credit" in d.needs)
WEB = [d.name for d in BY_NAME.values() if d.sign_in is not None or d.name == ISSUER]


@pytest.fixture
def stack(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[ProdStack]:
    # Only the prod overlay (the conftest has rendered deploy/generated/ for this session).
    with prod_stack(kustomize(DEPLOY / "overlays" / "prod"), postgres_server, tmp_path) as running:
        yield running


def credit(stack: ProdStack, member_id: str, amount: int) -> None:
    """Points for the member, credited over gRPC with a service token from identity's in-cluster
    token endpoint (what a service's own calls use)."""
    identity = stack.pods[ISSUER].env
    token_url = stack.pods[CREDITOR].env["KIZUNA_TOKEN_URL"]
    assert token_url.startswith(f"{stack.pods[ISSUER].local_url}/"), token_url
    reply = httpx.post(
        token_url,
        auth=(CREDITOR, stack.client_secrets[CREDITOR]),
        data={"grant_type": "client_credentials", "scope": "points:credit"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    token = reply.json()["access_token"]
    assert identity["KIZUNA_ISSUER"].startswith("https://")
    request = points_pb2.CreditRequest(
        member_id=member_id,
        amount=amount,
        kind=points_pb2.CREDIT_KIND_REGULAR,
        reason="welcome",
        source_service=CREDITOR,
        source_ref="prod-shaped",
    )
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(stack.pods[CREDITOR].env[f"{LEDGER.upper()}_ADDR"]) as channel:
        stub = points_pb2_grpc.PointsServiceStub(channel)
        attempt = 0
        while True:
            attempt += 1
            request.idempotency_key = f"welcome-{member_id}-{attempt}"
            try:
                stub.Credit(request, metadata=call_metadata(token), timeout=10)
                return
            except grpc.RpcError as exc:
                # The wallet opens when points has read identity's registration event.
                opening = isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND
                if not opening or time.monotonic() > deadline:
                    raise


def header_points(page: Page) -> int:
    slot = page.locator("[data-kz-points]")
    expect(slot).to_have_text(re.compile(r"^[\d,]+ pt$"))
    return int(slot.inner_text().removesuffix(" pt").replace(",", ""))


def visit(page: Page, url: str) -> None:
    """Open a page and let its silent single-sign-on round trip through identity finish."""
    try:
        page.goto(url)
    except PlaywrightError as exc:
        if "ERR_ABORTED" not in str(exc):
            raise
    page.wait_for_load_state("networkidle")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_member_across_the_prod_overlay(stack: ProdStack) -> None:
    print("local overrides of the prod manifests:\n" + json.dumps(stack.overrides, indent=1))
    print("in-cluster addresses mapped to loopback:\n" + json.dumps(stack.rewritten, indent=1))
    assert stack.leftovers() == {}, "in-cluster addresses nothing here resolves"
    urls = stack.public
    hosts = sorted(urlsplit(u).hostname or "" for u in urls.values())
    assert all(u.startswith("https://") for u in urls.values()), urls
    for pod in stack.pods.values():
        # What the pod is told to call: the issuer's public URL, its peers in-cluster.
        assert pod.env["KIZUNA_ISSUER"] == urls[ISSUER]
        assert pod.env["KIZUNA_JWKS_URL"].startswith(f"{stack.pods[ISSUER].local_url}/")
        # NATS as in prod: TLS (the test server accepts nothing else), its CA, the pod's own user.
        assert pod.env["NATS_URL"] == f"tls://127.0.0.1:{stack.nats_port}", pod.env["NATS_URL"]
        assert pod.env["NATS_USER"] == pod.name
    # identity's back-channel logout goes to each service's in-cluster address (here: its own
    # loopback address, not the 127.0.0.1 that identity's loopback rule would admit anyway).
    registered = {c["client_id"]: c for c in json.loads(stack.pods[ISSUER].env["KIZUNA_CLIENTS"])}
    for name in WEB:
        if name != ISSUER:
            uri = registered[name]["backchannel_logout_uri"]
            assert uri == f"{stack.pods[name].local_url}/auth/backchannel-logout", (name, uri)
            assert not uri.startswith("http://127.0.0.1"), uri
    for host in hosts:
        # The services' resolver is this machine's: the public hosts must not resolve there.
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo(host, 443)

    email = f"prod.{uuid.uuid4().hex[:8]}@example.com"
    started = time.monotonic()
    try:
        journey(stack, email)
    except BaseException:
        print("the services' logs:\n" + stack.log_tails())
        raise
    stack.timings["journey"] = round(time.monotonic() - started, 1)
    print(
        "seconds per phase:",
        stack.timings,
        "requests through the ingress:",
        len(stack.proxy.requests if stack.proxy else []),
    )


def journey(stack: ProdStack, email: str) -> None:
    urls = stack.public
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=[*CHROMIUM_ARGS, *stack.chromium_args()]
        )
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.set_default_timeout(20_000)

            # Sign up at identity's public host.
            page.goto(f"{urls[ISSUER]}/signup")
            page.get_by_label("Email").fill(email)
            page.get_by_label("Display name").fill("Prod Member")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Create account").click()
            page.goto(f"{urls[ISSUER]}/account")
            member_id = page.locator("[data-member-id]").inner_text().strip()
            assert member_id.startswith("mbr_"), member_id
            credit(stack, member_id, CREDITED)

            # Every service's header: the member, and the balance the ledger holds right now.
            for name in WEB:
                visit(page, f"{urls[name]}{'/account' if name == ISSUER else '/'}")
                assert page.url.startswith(urls[name]), (name, page.url)
                assert page.locator("[data-kz-member-name]").count() == 1, (name, page.inner_text("body")[:300])
                expect(page.locator("[data-kz-member-name]")).to_have_text("Prod Member")
                assert header_points(page) == CREDITED, name

            # Sign out once, at the shop: signed out everywhere.
            page.goto(f"{urls['shop']}/")
            page.locator("[data-kz-signout]").click()
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_load_state("networkidle")
            still_signed_in = {}
            for name in WEB:
                visit(page, f"{urls[name]}/")
                # What the header asks, from the page (only the browser resolves the public hosts).
                me = page.evaluate("fetch('/_kizuna/me', {cache: 'no-store'}).then(r => r.json())")
                if me.get("signed_in"):
                    still_signed_in[name] = me
            assert still_signed_in == {}, f"pages still signed in after signing out everywhere: {still_signed_in}"
            ended = stack.web_sessions_open(member_id)
            assert ended == {}, f"sessions still open after signing out everywhere: {ended}"

            # Sign in again at identity and download the data: every service's part.
            page.goto(f"{urls[ISSUER]}/account")
            page.get_by_label("Email").fill(email)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            with page.expect_download() as download:
                page.get_by_role("button", name="Download my data").click()
            archive = zipfile.ZipFile(io.BytesIO(download.value.path().read_bytes()))
            manifest = json.loads(archive.read("manifest.json"))
            assert manifest["member_id"] == member_id
            holders = [d.name for d in BY_NAME.values() if d.privacy]
            assert {n: part["status"] for n, part in manifest["services"].items()} == {
                n: "included" for n in [ISSUER, *holders]
            }, manifest
            for name in holders:
                part = json.loads(archive.read(f"{name}.json"))
                assert part["member_id"] == member_id, (name, part)
            assert email in archive.read(f"{ISSUER}.json").decode()
            assert str(CREDITED) in archive.read(f"{LEDGER}.json").decode()
            context.close()
        finally:
            browser.close()
