"""An injectable clock: rules that depend on time (hold expiry, statement closing, fraud
velocity, daily fund prices) read it here, so tests can move time."""

from __future__ import annotations

from datetime import datetime, timedelta

from kizuna.kit.db import utcnow


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
