"""What identity's routes, servicers and jobs share while it runs (`Service(context=...)`): the
provider (settings, database, keys, clients, the clock) and the OAuth 2.0 server built on it.
The wiring (service.py) builds it; this module only names it, so every module may read it
without importing the OAuth server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from kizuna.kit.service import Runtime

from identity.provider import Provider

if TYPE_CHECKING:
    from identity.oauth_server import KizunaAuthorizationServer


@dataclass
class Identity:
    provider: Provider
    oauth: KizunaAuthorizationServer

    async def aclose(self) -> None:
        await self.provider.close()


def identity_of(runtime: Runtime[Any]) -> Identity:
    """The running identity service's context."""
    return runtime.context_as(Identity)


def provider_of(request: Request) -> Provider:
    return identity_of(request.app.state.runtime).provider
