"""Ordered concurrency for streamed batch replies (the verifier's VerifyBatch, the corrector's CorrectBatch)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def ordered_window(items: list[T], work: Callable[[int, T], Awaitable[R]], window: int) -> AsyncIterator[R]:
    """`work(index, item)` for every item, at most `window` at a time, results yielded in item order.

    The window keeps every worker busy while replies leave in request order, bounds memory, and a slow consumer
    (backpressure on the yield) pauses new work. When the consumer stops (a cancelled call, a passed deadline),
    the work still in flight is cancelled."""
    if window < 1:
        raise ValueError("window: must be >= 1")
    pending: deque[asyncio.Future[R]] = deque()
    started = 0
    try:
        for _ in range(len(items)):
            while started < len(items) and len(pending) < window:
                pending.append(asyncio.ensure_future(work(started, items[started])))
                started += 1
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
