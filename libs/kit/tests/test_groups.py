"""GroupQueue: calls that arrive while a group is handled go together in the next one, each gets its
own outcome in order, a handler's error is its group's only, and a caller that gives up harms none."""

from __future__ import annotations

import asyncio

import pytest
from kizuna.kit.groups import GroupQueue


async def turns(n: int = 5) -> None:
    """Let the other tasks run up to their next wait (the loop runs ready tasks in order)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Handler:
    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.groups.append(items)
        await self.gate.wait()
        if -1 in items:
            raise ValueError("a bad group")
        return [item * 10 for item in items]


async def test_calls_arriving_while_a_group_is_handled_form_the_next_group_of_at_most_max_size() -> None:
    handler = Handler()
    queue = GroupQueue(handler, max_size=4, name="test")
    handler.gate.clear()
    first = asyncio.create_task(queue.submit(0))
    await turns()
    assert len(handler.groups) == 1
    rest = [asyncio.create_task(queue.submit(i)) for i in range(1, 7)]
    await turns()
    assert queue.queued == 6
    handler.gate.set()
    assert await first == 0
    assert [await task for task in rest] == [10, 20, 30, 40, 50, 60]
    assert handler.groups == [[0], [1, 2, 3, 4], [5, 6]]
    assert queue.groups == 3
    assert await queue.submit(7) == 70  # alone again: no timer, no wait


async def test_a_handlers_error_fails_its_group_only_and_a_caller_that_gives_up_harms_none() -> None:
    handler = Handler()
    queue = GroupQueue(handler, max_size=8, name="test")
    handler.gate.clear()
    blocked = asyncio.create_task(queue.submit(1))
    await turns()
    assert len(handler.groups) == 1
    bad = [asyncio.create_task(queue.submit(i)) for i in (2, -1)]
    await turns()
    assert queue.queued == 2
    blocked.cancel()  # its caller went away while its group was handled
    handler.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    for task in bad:
        with pytest.raises(ValueError, match="a bad group"):
            await task
    assert await queue.submit(3) == 30
    assert handler.groups == [[1], [2, -1], [3]]
    with pytest.raises(ValueError, match="at least 1"):
        GroupQueue(handler, max_size=0, name="test")
