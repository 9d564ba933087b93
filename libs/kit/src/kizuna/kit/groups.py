"""Group commit, as a queue: calls that arrive while one group is being handled go together in the
next. One group in flight at a time, at most `max_size` calls in one, and no timer: a lone call is
handled at once, and under load groups grow by themselves to what arrives in one group's time.

The handler takes a group and returns one outcome per call, in order; what it raises is every
call's error. A caller that gives up (a cancelled RPC) leaves its call in the group: the outcome is
simply not delivered, as with a transaction that commits after its client went away.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupQueue(Generic[T, R]):
    def __init__(self, handle: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_size: int, name: str) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._handle = handle
        self.max_size = max_size
        self.name = name
        self._queue: collections.deque[tuple[T, asyncio.Future[R]]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self.groups = 0  # groups handled (their handler returned)

    @property
    def queued(self) -> int:
        """Calls waiting for the next group."""
        return len(self._queue)

    async def submit(self, item: T) -> R:
        """The call's outcome, once its group has been handled."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=self.name)
        return await future

    async def _drain(self) -> None:
        group: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._queue:
                group = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_size))]
                try:
                    outcomes = await self._handle([item for item, _ in group])
                    if len(outcomes) != len(group):
                        raise RuntimeError(f"{self.name}: {len(outcomes)} outcomes for {len(group)} calls")
                except Exception as exc:  # every call of the group fails with it
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    self.groups += 1
                    for (_, future), outcome in zip(group, outcomes, strict=True):
                        if not future.done():
                            future.set_result(outcome)
                group = []
        except BaseException:
            # Cancelled (the loop is closing): no call waits for a group that will not come.
            for _, future in [*group, *self._queue]:
                if not future.done():
                    future.set_exception(RuntimeError(f"{self.name} stopped"))
            self._queue.clear()
            raise
