"""What identity's routes, servicers and jobs share while it runs (`Service(context=...)`): the
provider (settings, database, keys, clients, the clock) and the OAuth 2.0 server built on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from kizuna.kit.service import Runtime

from identity import clients
from identity.provider import Provider

if TYPE_CHECKING:
    from identity.oauth_server import KizunaAuthorizationServer


@dataclass
class Identity:
    provider: Provider
    oauth: KizunaAuthorizationServer

    async def aclose(self) -> None:
        await self.provider.close()


async def identity_context(runtime: Runtime[Any]) -> Identity:
    """Built once at start: a signing key exists and the configured clients are registered."""
    from identity.oauth_server import KizunaAuthorizationServer

    # The runtime's clock, read at every call (tests may swap it, or set the provider's own).
    provider = Provider(runtime.settings, runtime.db, clock=lambda: runtime.clock.now())
    await provider.keys.ensure_signing_key()
    await clients.register_configured(runtime.db, runtime.settings.kizuna_clients, provider.now(), provider.scopes)
    # The kit's flash messages (kizuna.kit.flash) are signed with a key of identity's own.
    runtime.state["flash_secret"] = provider.csrf_secret
    return Identity(provider, KizunaAuthorizationServer(provider))


def identity_of(runtime: Runtime[Any]) -> Identity:
    """The running identity service's context."""
    return runtime.context_as(Identity)


def provider_of(request: Request) -> Provider:
    return identity_of(request.app.state.runtime).provider
