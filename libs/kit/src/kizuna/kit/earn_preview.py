"""What paying an amount would earn a member, as a service's pages show it ("earn 18 pt"): points'
earn preview, for any service whose pages show prices.

Points answers one amount per call, so a page asks for the distinct amounts it shows at once
(concurrently), remembers each answer for a minute, and waits at most `budget_seconds`: an amount
points has not answered by then shows no badge rather than holding the page. When points is away
(or identity, for this service's token) the pages stop asking for `quiet_seconds`, so a page does
not wait on every visit.

    class Settings(EarnPreviewSettings): ...          # EARN_PREVIEW_BUDGET_SECONDS, ..._QUIET_SECONDS
    earn = EarnPreviews.of(points_client, settings)     # once, at start
    badges = await earn.many(member_id, {(price_minor, "JPY") for price_minor in prices})
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kizuna.kit.errors import DomainError, Unavailable
from kizuna.kit.points import PointsClient
from kizuna.kit.settings import ServiceSettings
from pydantic import Field

log = logging.getLogger("kizuna.earn_preview")

Amount = tuple[int, str]  # (minor units paid, currency)


class EarnPreviewSettings(ServiceSettings):
    """The settings of a service whose pages show earn badges."""

    # How long a page waits for points' earn previews before it renders without their badges.
    earn_preview_budget_seconds: float = Field(default=1.5, gt=0, le=30)
    # How long pages stop asking points after it failed to answer in time (0: ask on every page).
    earn_preview_quiet_seconds: float = Field(default=30.0, ge=0, le=3600)


@dataclass
class EarnPreviews:
    """A service's earn previews, remembered for `ttl_seconds` (built once, at start)."""

    points: PointsClient
    ttl_seconds: float = 60.0
    budget_seconds: float = 1.5
    quiet_seconds: float = 30.0
    max_entries: int = 10_000
    monotonic: Callable[[], float] = time.monotonic
    _cache: dict[tuple[str, int, str], tuple[float, int]] = field(default_factory=dict)
    _quiet_until: float = float("-inf")

    @classmethod
    def of(cls, points: PointsClient, settings: EarnPreviewSettings) -> EarnPreviews:
        """Earn previews as the service's settings have them."""
        return cls(
            points,
            budget_seconds=settings.earn_preview_budget_seconds,
            quiet_seconds=settings.earn_preview_quiet_seconds,
        )

    async def many(self, member_id: str, amounts: Iterable[Amount]) -> dict[Amount, int]:
        """Points each amount would earn the member now; amounts without an answer are left out."""
        now = self.monotonic()
        found: dict[Amount, int] = {}
        missing: list[Amount] = []
        for amount in {a for a in amounts if a[0] > 0}:
            cached = self._cache.get((member_id, *amount))
            if cached is not None and cached[0] > now:
                found[amount] = cached[1]
            else:
                missing.append(amount)
        if missing and now >= self._quiet_until:
            found.update(await self._ask(member_id, missing))
        return found

    async def one(self, member_id: str, amount_minor: int, currency: str) -> int | None:
        """What this one amount would earn the member, asked now (a promise the checkout makes)."""
        if amount_minor <= 0 or self.monotonic() < self._quiet_until:
            return None
        return (await self._ask(member_id, [(amount_minor, currency)])).get((amount_minor, currency))

    async def _ask(self, member_id: str, amounts: list[Amount]) -> dict[Amount, int]:
        asks = {
            amount: asyncio.ensure_future(
                self.points.preview_earn(member_id=member_id, amount_minor=amount[0], currency=amount[1])
            )
            for amount in amounts
        }
        done, late = await asyncio.wait(asks.values(), timeout=self.budget_seconds)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        answers: dict[Amount, int] = {}
        away = bool(late)
        expires = self.monotonic() + self.ttl_seconds
        for amount, task in asks.items():
            if task not in done:
                continue
            error = task.exception()
            if error is None:
                answers[amount] = int(task.result().total)
                self._remember((member_id, *amount), expires, answers[amount])
            elif isinstance(error, DomainError):
                away = away or isinstance(error, Unavailable)
                log.warning("earn preview refused", extra={"amount_minor": amount[0], "error": error.message})
            else:
                raise error
        if away:
            self._quiet_until = self.monotonic() + self.quiet_seconds
            log.warning(
                "points did not answer earn previews in time; pages show no earn badges for a while",
                extra={"unanswered": len(amounts) - len(answers), "quiet_seconds": self.quiet_seconds},
            )
        return answers

    def _remember(self, key: tuple[str, int, str], expires: float, points: int) -> None:
        if len(self._cache) >= self.max_entries:
            now = self.monotonic()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        self._cache[key] = (expires, points)
