"""What the domain modules need from the running service: settings, clock, database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.service import Runtime

from fintech.fraud import FraudRules
from fintech.settings import Settings


@dataclass
class Fintech:
    settings: Settings
    db: Database
    runtime: Runtime[Any]

    @property
    def postgres(self) -> bool:
        return not self.db.is_sqlite

    @property
    def clock(self) -> Clock:
        """The runtime's clock (tests swap in a `FrozenClock`)."""
        return self.runtime.clock

    @property
    def card_token_key(self) -> str:
        key: str = self.runtime.state["card_token_key"]
        return key

    @property
    def fraud_rules(self) -> FraudRules:
        from datetime import timedelta

        from kizuna.kit.web import service_links

        from fintech.fraud import ecosystem_clients

        s = self.settings
        return FraudRules(
            s.fraud_velocity_count,
            timedelta(seconds=s.fraud_velocity_window_seconds),
            s.fraud_max_amount_minor,
            # The ecosystem's services, as the platform lists them to every service (KIZUNA_LINKS).
            ecosystem=ecosystem_clients(link["name"] for link in service_links()),
        )


def fintech_of(runtime: Runtime[Any]) -> Fintech:
    """The domain context of a running fintech service (created on first use)."""
    ctx = runtime.state.get("fintech")
    if ctx is None:
        ctx = Fintech(settings=runtime.settings, db=runtime.db, runtime=runtime)
        runtime.state["fintech"] = ctx
    return ctx  # type: ignore[no-any-return]
