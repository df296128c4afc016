"""lema.core.concurrency.ordered_window: results in item order, at most `window` in flight, the rest cancelled when
the consumer stops."""

from __future__ import annotations

import asyncio

import pytest

from lema.core.concurrency import ordered_window


def test_order_is_kept_and_the_window_bounds_work_in_flight():
    async def run():
        in_flight, peak = 0, 0

        async def work(index: int, delay: float) -> int:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(delay)
            in_flight -= 1
            return index

        delays = [0.03, 0.0, 0.02, 0.0, 0.01, 0.0, 0.0]
        results = [r async for r in ordered_window(delays, work, window=3)]
        return results, peak

    results, peak = asyncio.run(run())
    assert results == list(range(7)) and peak == 3


def test_a_consumer_that_stops_cancels_the_work_in_flight():
    async def run():
        cancelled = []

        async def work(index: int, _: None) -> int:
            try:
                await asyncio.sleep(0 if index == 0 else 10)
            except asyncio.CancelledError:
                cancelled.append(index)
                raise
            return index

        stream = ordered_window([None] * 5, work, window=3)
        assert await stream.__anext__() == 0
        await stream.aclose()
        await asyncio.sleep(0)
        return cancelled

    assert sorted(asyncio.run(run())) == [1, 2]  # started with 0 (window 3); 3 and 4 never started


def test_the_window_is_at_least_one():
    async def run():
        return [r async for r in ordered_window([1], lambda i, x: asyncio.sleep(0, x), window=0)]

    with pytest.raises(ValueError, match="window"):
        asyncio.run(run())
