"""The identity service: the OpenID Connect provider that issues the one member ID.

HTTP: discovery, JWKS, authorize, token, userinfo, introspection, revocation, logout (oauth_server,
logout), the sign-in / sign-up / account pages (pages) and the header's `/_kizuna/me`
(member_header). gRPC: IdentityService.GetMember.
Publishes identity.member.registered / .updated / .erasure_requested; consumes
<service>.member.erased (erasure progress). Jobs: key reload, back-channel logout retries, cleanup.
Commands: rotate-keys, reencrypt-keys, register-client. HTTP admin API: /admin/clients (admin_api).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter
from kizuna.identity.v1 import identity_pb2_grpc
from kizuna.kit import web
from kizuna.kit.service import Runtime, Service

from identity import (
    admin,
    admin_api,
    backchannel,
    cleanup,
    clients,
    demo,
    grpc_api,
    logout,
    member_header,
    oauth_server,
    pages,
    privacy,
)
from identity.context import Identity, identity_of
from identity.keys import KeyEncryptionKeyError
from identity.oauth_server import KizunaAuthorizationServer
from identity.provider import Provider
from identity.settings import Settings

log = logging.getLogger("identity")
router = APIRouter()
for part in (oauth_server.router, logout.router, pages.router, member_header.router, admin_api.router, web.router):
    router.include_router(part)


async def reload_keys(runtime: Runtime[Any]) -> None:
    """Pick up keys another replica or `rotate-keys` added. A key this replica cannot decrypt (its
    IDENTITY_KEY_ENCRYPTION_KEYS lacks the version another one wrote with) is logged, and the keys
    already loaded keep serving until the configuration is fixed."""
    while True:
        await asyncio.sleep(runtime.settings.identity_key_reload_seconds)
        try:
            await identity_of(runtime).provider.keys.reload()
        except KeyEncryptionKeyError as exc:
            log.error("signing keys not reloaded", extra={"reason": str(exc)})


async def check_signing_key(runtime: Runtime[Any]) -> None:
    identity_of(runtime).provider.keys.signing_key()


async def identity_context(runtime: Runtime[Any]) -> Identity:
    """Built once at start: a signing key exists and the configured clients are registered."""
    # The runtime's clock, read at every call (tests may swap it, or set the provider's own).
    provider = Provider(runtime.settings, runtime.db, clock=lambda: runtime.clock.now())
    await provider.keys.ensure_signing_key()
    await clients.register_configured(
        runtime.db,
        runtime.settings.kizuna_clients,
        provider.now(),
        provider.scopes,
        clients.in_cluster_links(runtime.settings.kizuna_internal_links),
    )
    # The kit's flash messages (kizuna.kit.flash) are signed with a key of identity's own.
    runtime.state["flash_secret"] = provider.csrf_secret
    return Identity(provider, KizunaAuthorizationServer(provider))


service = Service(
    name="identity",
    settings=Settings,
    http=router,
    grpc=[(identity_pb2_grpc.add_IdentityServiceServicer_to_server, grpc_api.IdentityApi)],
    context=identity_context,
    # `<service>.member.erased` from every service that holds member data, one consumer per stream.
    consumers=lambda runtime: privacy.progress_consumers(runtime.settings),
    jobs=[reload_keys, backchannel.retry_deliveries, cleanup.cleanup_job],
    readiness=[check_signing_key],
    commands={
        "rotate-keys": admin.rotate_keys,
        "reencrypt-keys": admin.reencrypt_keys,
        "register-client": admin.register_client,
        "seed": demo.seed,
    },
    # identity verifies tokens for its own gRPC API but is the issuer: it must not wait on itself.
    jwks_readiness=False,
)
