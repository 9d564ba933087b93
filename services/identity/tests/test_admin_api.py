"""The client admin API as an operator's script would use it: PATCH changes only what it names,
PUT replaces everything and so needs everything, a client cannot change or remove itself, and a
chosen secret must be long enough."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .identity_support import identity_settings, reset_streams, running_identity

ADMIN_SECRET = "admin-secret-0123456789abcdef-0123456789"
OTHER_ADMIN_SECRET = "other-admin-secret-0123456789abcdef-0123"
ADMINS = [
    {
        "client_id": "ops",
        "client_secret": ADMIN_SECRET,
        "grant_types": ["client_credentials"],
        "scopes": ["identity:admin"],
    },
    {
        "client_id": "ops2",
        "client_secret": OTHER_ADMIN_SECRET,
        "grant_types": ["client_credentials"],
        "scopes": ["identity:admin"],
    },
]
PARTNER = {
    "client_id": "partner",
    "name": "Partner",
    "redirect_uris": ["https://partner.example/callback"],
    "grant_types": ["authorization_code", "client_credentials"],
    "scopes": ["openid", "points:read"],
}


class Admin:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.headers: dict[str, str] = {}

    async def token(self, client_id: str, secret: str, scope: str = "identity:admin") -> httpx.Response:
        return await self.http.post(
            "/token", auth=(client_id, secret), data={"grant_type": "client_credentials", "scope": scope}
        )

    async def sign_in(self, client_id: str = "ops", secret: str = ADMIN_SECRET) -> None:
        response = await self.token(client_id, secret)
        assert response.status_code == 200, response.text
        self.headers = {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.http.request(method, path, json=body, headers=self.headers)


@pytest.fixture
async def admin(nats_url: str, database_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    await reset_streams(nats_url, "IDENTITY")
    settings = identity_settings(nats_url, database_url, tmp_path, extra_clients=ADMINS)
    async with running_identity(settings) as idp, httpx.AsyncClient(base_url=idp.issuer) as http:
        ops = Admin(http)
        await ops.sign_in()
        yield ops


async def test_patch_changes_only_the_fields_it_names(admin: Admin) -> None:
    created = await admin.call("POST", "/admin/clients", PARTNER)
    assert created.status_code == 201, created.text
    secret = created.json()["client_secret"]

    renamed = await admin.call("PATCH", "/admin/clients/partner", {"name": "Partner Co."})

    assert renamed.status_code == 200, renamed.text
    body = renamed.json()
    assert body["name"] == "Partner Co."
    assert body["scopes"] == ["openid", "points:read"]  # not reset to the defaults
    assert body["redirect_uris"] == PARTNER["redirect_uris"]
    assert "client_secret" not in body
    still = await admin.token("partner", secret, "")
    assert still.status_code == 200, still.text  # the secret still works

    narrowed = await admin.call("PATCH", "/admin/clients/partner", {"scopes": ["openid"]})
    assert narrowed.json()["scopes"] == ["openid"] and narrowed.json()["name"] == "Partner Co."

    rotated = await admin.call("PATCH", "/admin/clients/partner", {"rotate_secret": True})
    assert rotated.status_code == 200
    new_secret = rotated.json()["client_secret"]
    assert len(new_secret) >= 32
    assert (await admin.token("partner", secret, "")).status_code == 401
    assert (await admin.token("partner", new_secret, "")).status_code == 200

    assert (await admin.call("PATCH", "/admin/clients/nobody", {"name": "x"})).status_code == 404
    unknown_field = await admin.call("PATCH", "/admin/clients/partner", {"colour": "red"})
    assert unknown_field.status_code == 422
    bad_scope = await admin.call("PATCH", "/admin/clients/partner", {"scopes": ["root"]})
    assert bad_scope.status_code == 400
    after = (await admin.call("GET", "/admin/clients/partner")).json()
    assert after["scopes"] == ["openid"] and after["name"] == "Partner Co."


async def test_put_is_a_full_replacement_and_needs_every_field(admin: Admin) -> None:
    assert (await admin.call("POST", "/admin/clients", PARTNER)).status_code == 201

    partial = await admin.call("PUT", "/admin/clients/partner", {"client_id": "partner", "name": "Only a name"})

    assert partial.status_code == 422
    assert {e["loc"][-1] for e in partial.json()["detail"]} >= {"scopes", "client_secret", "grant_types"}
    assert (await admin.call("GET", "/admin/clients/partner")).json()["name"] == "Partner"

    full = {
        **PARTNER,
        "name": "Replaced",
        "client_secret": None,
        "post_logout_redirect_uris": [],
        "first_party": False,
        "backchannel_logout_uri": None,
        "public": False,
    }
    replaced = await admin.call("PUT", "/admin/clients/partner", full)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["name"] == "Replaced" and replaced.json()["client_secret"]


async def test_a_client_cannot_change_or_remove_itself(admin: Admin) -> None:
    strip = await admin.call("PATCH", "/admin/clients/ops", {"scopes": []})
    assert strip.status_code == 403
    raise_own = await admin.call("PATCH", "/admin/clients/ops", {"scopes": ["identity:admin", "points:credit"]})
    assert raise_own.status_code == 403
    assert (await admin.call("DELETE", "/admin/clients/ops")).status_code == 403
    assert (await admin.call("GET", "/admin/clients/ops")).json()["scopes"] == ["identity:admin"]

    # Another admin client may change it.
    await admin.sign_in("ops2", OTHER_ADMIN_SECRET)
    changed = await admin.call("PATCH", "/admin/clients/ops", {"name": "Operations"})
    assert changed.status_code == 200 and changed.json()["scopes"] == ["identity:admin"]


@pytest.mark.parametrize("secret", ["short", "x" * 31, "y" * 201])
async def test_a_chosen_secret_must_have_at_least_32_characters(admin: Admin, secret: str) -> None:
    created = await admin.call("POST", "/admin/clients", {**PARTNER, "client_secret": secret})
    assert created.status_code == 400
    assert "32" in created.json()["message"]
    assert (await admin.call("GET", "/admin/clients/partner")).status_code == 404

    assert (await admin.call("POST", "/admin/clients", PARTNER)).status_code == 201
    patched = await admin.call("PATCH", "/admin/clients/partner", {"client_secret": secret})
    assert patched.status_code == 400

    good = "z" * 32
    assert (await admin.call("PATCH", "/admin/clients/partner", {"client_secret": good})).status_code == 200
    assert (await admin.token("partner", good, "")).status_code == 200
