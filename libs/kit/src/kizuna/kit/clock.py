"""Injectable time: rules that depend on time (expiry, deadlines, campaigns) ask a clock, so tests
can move it instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class Clock:
    """The real clock (timezone-aware UTC)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock(Clock):
    """A clock tests set and advance by hand."""

    def __init__(self, at: datetime | None = None) -> None:
        self._now = at or datetime.now(UTC)
        if self._now.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware time")

    def now(self) -> datetime:
        return self._now

    def set(self, at: datetime) -> None:
        self._now = at

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now


class LiveClock(Clock):
    """Asks `current()` for the clock at every call: domain objects built once at start hold this and
    follow a running service's `runtime.clock`, which a test may swap for a `FrozenClock` at any time.

        clock = LiveClock(lambda: runtime.clock)
    """

    def __init__(self, current: Callable[[], Clock]) -> None:
        self._current = current

    def now(self) -> datetime:
        return self._current().now()
