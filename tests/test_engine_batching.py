"""The transformers engine's scheduler (issue 14): requests that wait together are generated together, with the
same greedy output each would get alone; a cancelled request stops its batch early and the next one is served."""

from __future__ import annotations

import asyncio

import pytest
from conftest import requires_lema_tiny

from lema.core.engines import EngineError, SamplingParams
from lema.core.engines.transformers_engine import TransformersEngine
from lema.core.model_resolve import resolve_model

pytestmark = requires_lema_tiny

PROMPTS = [f"Question: Ann has {i} pens and buys {i + 3} more. How many pens does she have?\nAnswer:"
           for i in range(12)]


@pytest.fixture(scope="module")
def engine():
    return TransformersEngine(resolve_model("lema-tiny"), batch_size=32)


def test_concurrent_requests_share_batches_and_match_requests_served_alone(engine):
    async def run():
        alone = [(await engine.generate([p], SamplingParams(max_tokens=8 + i)))[0][0] for i, p in enumerate(PROMPTS)]
        before = dict(engine.stats)
        together = await asyncio.gather(*[engine.generate([p], SamplingParams(max_tokens=8 + i))
                                          for i, p in enumerate(PROMPTS)])
        return alone, before, [t[0][0] for t in together]

    alone, before, together = asyncio.run(run())
    assert [c.text for c in together] == [c.text for c in alone]  # greedy: the same text as alone
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]  # each its own max_tokens
    assert [c.finish_reason for c in together] == [c.finish_reason for c in alone]
    groups = engine.stats["groups"] - before["groups"]
    assert engine.stats["requests"] - before["requests"] == len(PROMPTS) and groups < len(PROMPTS) / 2


def test_greedy_requests_with_different_n_share_a_batch_and_each_gets_its_n(engine):
    async def run():
        return await asyncio.gather(*[engine.generate([PROMPTS[i]], SamplingParams(n=n, max_tokens=10))
                                      for i, n in enumerate((1, 3, 2))])

    results = asyncio.run(run())
    assert [len(r[0]) for r in results] == [1, 3, 2]
    assert all(len({c.text for c in r[0]}) == 1 for r in results)


def test_requests_that_cannot_share_a_batch_are_served_apart_and_correctly(engine):
    async def run():
        greedy = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=12))
        seeded = engine.generate([PROMPTS[1]], SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=3))
        stopped = engine.generate([PROMPTS[2]], SamplingParams(max_tokens=12, stop=("pens",)))
        return await asyncio.gather(greedy, seeded, stopped)

    greedy, seeded, stopped = asyncio.run(run())
    again = asyncio.run(engine.generate([PROMPTS[1]], SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=3)))
    assert [c.text for c in seeded[0]] == [c.text for c in again[0]]  # a seed still decides the samples
    assert "pens" not in stopped[0][0].text and len(greedy[0]) == 1


def test_a_cancelled_request_stops_its_batch_and_the_next_request_is_served(engine):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=400, seed=2)  # four rows of 400 tokens (measured)
    asyncio.run(engine.generate(["Step 1:"], params))
    full = engine.stats["last_batch_steps"]

    async def abandon():
        task = asyncio.ensure_future(engine.generate(["Step 1:"], params))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while engine.busy_for_s > 0:  # the abandoned batch ends at its next decoding step
            await asyncio.sleep(0.01)
        stopped_at = engine.stats["last_batch_steps"]
        after = await engine.generate([PROMPTS[0]], SamplingParams(max_tokens=8))
        return stopped_at, after

    stopped_at, after = asyncio.run(abandon())
    assert full == 400 and 0 < stopped_at < full  # stopped early, not generated to the end for nobody
    assert after[0][0].completion_tokens <= 8 and after[0][0].text


def test_a_closed_engine_refuses_new_work():
    engine = TransformersEngine(resolve_model("lema-tiny"))

    async def run():
        await engine.close()
        with pytest.raises(EngineError, match="closed"):
            await engine.generate([PROMPTS[0]], SamplingParams(max_tokens=4))

    asyncio.run(run())
