"""The shop's clock: the running service's kit clock, read at every call, so that a test can swap
`runtime.clock` for a `FrozenClock` (deadlines, auto-completion, stuck transitions) at any time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kizuna.kit.clock import Clock
from kizuna.kit.service import Runtime


class RuntimeClock(Clock):
    def __init__(self, runtime: Runtime[Any]) -> None:
        self._runtime = runtime

    def now(self) -> datetime:
        return self._runtime.clock.now()
