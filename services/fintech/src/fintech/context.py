"""What fintech's routes, servicers, consumers and jobs share while it runs (`Service(context=...)`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.points import PointsClient
from kizuna.kit.service import Runtime, context_of
from kizuna.kit.web import service_links

from fintech.card_keys import card_token_key
from fintech.fraud import FraudRules, ecosystem_clients
from fintech.settings import Settings


@dataclass
class Fintech:
    settings: Settings
    db: Database
    runtime: Runtime[Any]
    # Keys the hash that stands in for card numbers (see card_keys.py).
    card_token_key: str
    # Spends the member's points on a bill or a fund, with keys derived from fintech's payment ID.
    points: PointsClient

    @property
    def postgres(self) -> bool:
        return not self.db.is_sqlite

    @property
    def clock(self) -> Clock:
        """The runtime's clock, read at every call (tests swap in a `FrozenClock`)."""
        return self.runtime.clock

    @property
    def fraud_rules(self) -> FraudRules:
        s = self.settings
        return FraudRules(
            s.fraud_velocity_count,
            timedelta(seconds=s.fraud_velocity_window_seconds),
            s.fraud_max_amount_minor,
            # The ecosystem's services, as the platform lists them to every service (KIZUNA_LINKS).
            ecosystem=ecosystem_clients(link["name"] for link in service_links()),
        )

    async def aclose(self) -> None:
        await self.points.close()


def fintech_context(runtime: Runtime[Any]) -> Fintech:
    """Built once at start; a missing card-token key fails the start with a message naming CARD_TOKEN_KEY."""
    settings: Settings = runtime.settings
    points = PointsClient(settings.points_addr, runtime.service_tokens, service="fintech")
    return Fintech(settings, runtime.db, runtime, card_token_key(settings), points)


def fintech_of(runtime: Runtime[Any]) -> Fintech:
    """The running fintech service's context."""
    return runtime.context_as(Fintech)


FintechDep = Annotated[Fintech, Depends(context_of(Fintech))]
