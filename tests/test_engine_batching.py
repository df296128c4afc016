"""The transformers engine's continuous batching (issue 26): requests join the running batch at the next decoding
step and leave it as they finish, with the output each would get alone; per-request sampling in one batch; requests
for different adapters share steps; cancellation drops rows at once; one heavy request cannot hold the engine; the
queue and the sequences per request are bounded; shutdown drains within a grace period."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import requires_lema_tiny

from lema.core.engines import EngineError, SamplingParams
from lema.core.engines.continuous import EngineBusy, EngineClosed, TooManySequences
from lema.core.engines.transformers_engine import TransformersEngine
from lema.core.errors import InvalidInput, Unavailable
from lema.core.model_resolve import resolve_model

pytestmark = requires_lema_tiny

PROMPTS = [f"Question: Ann has {i} pens and buys {i + 3} more. How many pens does she have?\nAnswer:"
           for i in range(12)]


@pytest.fixture(scope="module")
def engine():
    return TransformersEngine(resolve_model("lema-tiny"), batch_size=32, threads=1)


async def _until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.002)


def test_requests_joining_mid_batch_get_what_they_get_alone_and_finish_first(engine):
    long_params = SamplingParams(max_tokens=300)

    async def run():
        alone = [(await engine.generate([p], SamplingParams(max_tokens=8 + i)))[0][0] for i, p in enumerate(PROMPTS)]
        long_alone = (await engine.generate(["Step 1:"], long_params))[0][0]
        before = dict(engine.stats)
        long_task = asyncio.ensure_future(engine.generate(["Step 1:"], long_params))
        await _until(lambda: engine.stats["tokens"] - before["tokens"] >= 20)  # the long row is decoding
        joined = await asyncio.gather(*[engine.generate([p], SamplingParams(max_tokens=8 + i))
                                        for i, p in enumerate(PROMPTS)])
        long_running_after_short = not long_task.done()
        long_joined = (await long_task)[0][0]
        return alone, long_alone, [j[0][0] for j in joined], long_joined, long_running_after_short, before

    alone, long_alone, joined, long_joined, long_ran_on, before = asyncio.run(run())
    assert long_alone.completion_tokens > 100  # long enough that the short ones really joined a running batch
    assert long_ran_on  # the short requests did not wait for the long one to end
    assert [c.text for c in joined] == [c.text for c in alone]  # greedy: the same text as alone
    assert [c.completion_tokens for c in joined] == [c.completion_tokens for c in alone]  # each its own max_tokens
    assert [c.finish_reason for c in joined] == [c.finish_reason for c in alone]
    assert long_joined.text == long_alone.text  # and rows joining did not disturb the running one
    assert engine.stats["max_rows_seen"] >= 2


def test_one_batch_serves_every_request_its_own_sampling(engine):
    seeded = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=24, seed=3)

    async def run():
        seeded_alone = await engine.generate([PROMPTS[1]], seeded)
        return seeded_alone, await asyncio.gather(
            engine.generate([PROMPTS[0]], SamplingParams(max_tokens=12)),
            engine.generate([PROMPTS[1]], seeded),
            engine.generate([PROMPTS[2]], SamplingParams(max_tokens=40, stop=("pens",))),
            engine.generate([PROMPTS[3]], SamplingParams(n=3, max_tokens=10)),
            engine.generate([PROMPTS[4]], SamplingParams(n=2, temperature=0.7, max_tokens=16)),
        )

    seeded_alone, (greedy, seeded_batched, stopped, greedy_n, sampled) = asyncio.run(run())
    # A seed decides a request's samples whatever else shares the batch (each row draws from its own generator).
    assert [c.text for c in seeded_batched[0]] == [c.text for c in seeded_alone[0]]
    assert "pens" not in stopped[0][0].text
    assert len(greedy[0]) == 1 and greedy[0][0].completion_tokens <= 12
    assert len(greedy_n[0]) == 3 and len({c.text for c in greedy_n[0]}) == 1  # greedy n: one answer, n times
    assert len(sampled[0]) == 2 and all(c.completion_tokens <= 16 for c in sampled[0])


def test_requests_for_different_adapters_share_steps_and_match_alone(tmp_path):
    from lema.devtools import make_adapters

    model_dir = resolve_model("lema-tiny")
    adapters = make_adapters(__import__("pathlib").Path(model_dir), tmp_path, {"a1": 1, "a2": 2})
    engine = TransformersEngine(model_dir, batch_size=32, threads=1)
    names = [None, "a1", "a2"]
    jobs = [(p, a) for p in PROMPTS[:4] for a in names]

    async def run():
        for name, path in adapters.items():
            await engine.load_adapter(name, str(path))
        alone = [(await engine.generate([p], SamplingParams(max_tokens=24), a))[0][0].text for p, a in jobs]
        steps = engine.stats["steps"]
        mixed = await asyncio.gather(*[engine.generate([p], SamplingParams(max_tokens=24), a) for p, a in jobs])
        return alone, [m[0][0].text for m in mixed], engine.stats["steps"] - steps

    alone, mixed, steps = asyncio.run(run())
    assert len(set(alone)) == len(jobs)  # the adapters really change the output
    assert mixed == alone
    assert steps < 24 * 2  # shared steps: all twelve in about one request's steps, not twelve requests' worth


def test_a_cancelled_request_leaves_the_batch_at_the_next_step(engine):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=400, seed=2)

    async def abandon():
        task = asyncio.ensure_future(engine.generate(["Step 1:"], params))
        await _until(lambda: engine.scheduler.running_rows == 4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(lambda: engine.scheduler.running_rows == 0 and engine.scheduler.in_flight == 0, timeout=5)
        tokens = engine.stats["tokens"]
        await asyncio.sleep(0.1)
        idle_tokens = engine.stats["tokens"] - tokens
        after = await engine.generate([PROMPTS[0]], SamplingParams(max_tokens=8))
        return idle_tokens, after

    idle_tokens, after = asyncio.run(abandon())
    assert idle_tokens == 0  # nothing generated for nobody
    assert after[0][0].completion_tokens <= 8 and after[0][0].text


def test_a_short_request_is_not_held_behind_a_heavy_one(engine):
    """The head-of-line case: one request of 16 prompts x n=16 x 480 tokens, then a 4-token request."""
    heavy = SamplingParams(n=16, temperature=1.0, max_tokens=480, seed=1)

    async def run():
        heavy_task = asyncio.ensure_future(engine.generate(PROMPTS[:16] * 2, heavy))
        await _until(lambda: engine.scheduler.running_rows == engine.scheduler.max_rows)
        started = time.monotonic()
        short = await engine.generate([PROMPTS[0]], SamplingParams(max_tokens=4))
        waited = time.monotonic() - started
        still_running = not heavy_task.done()
        heavy_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await heavy_task
        return short, waited, still_running

    preemptions = engine.stats["preemptions"]
    short, waited, still_running = asyncio.run(run())
    assert still_running and short[0][0].completion_tokens == 4
    assert engine.stats["preemptions"] > preemptions  # the full batch gave the newcomer a row
    assert waited < 1.0, f"the 4-token request waited {waited:.2f} s behind the heavy one"


def test_bounds_on_sequences_per_request_and_on_the_queue():
    engine = TransformersEngine(resolve_model("lema-tiny"), batch_size=4, threads=1, max_waiting=8,
                                max_sequences_per_request=6)

    async def run():
        with pytest.raises(TooManySequences, match=r"prompts x n.*7 sequences.*at most 6") as too_many:
            await engine.generate(PROMPTS[:1], SamplingParams(n=7, temperature=1.0, max_tokens=4))
        assert isinstance(too_many.value, InvalidInput)  # 400 at the endpoint
        # Greedy n is generated once: n=16 greedy is one sequence, within the bound.
        assert len((await engine.generate(PROMPTS[:1], SamplingParams(n=16, max_tokens=2)))[0]) == 16
        # Rows that cannot end early (ignore_eos, 400 tokens): the queue stays at 2 + 6 = 8 sequences while the third
        # request arrives, whatever the machine's speed.
        long = SamplingParams(max_tokens=400, ignore_eos=True)
        first = asyncio.ensure_future(engine.generate(PROMPTS[:6], long))
        await _until(lambda: engine.scheduler.running_rows == 4)
        second = asyncio.ensure_future(engine.generate(PROMPTS[:6], long))
        await _until(lambda: engine.scheduler.waiting_sequences == 8)
        with pytest.raises(EngineBusy, match="queue is full") as busy:
            await engine.generate(PROMPTS[:6], SamplingParams(max_tokens=4))
        assert isinstance(busy.value, Unavailable)  # 503 with Retry-After at the endpoint
        first.cancel()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        await engine.close()

    asyncio.run(run())


def test_shutdown_drains_within_the_grace_period_then_cancels():
    engine = TransformersEngine(resolve_model("lema-tiny"), batch_size=8, threads=1)

    async def run():
        short = asyncio.ensure_future(engine.generate([PROMPTS[0]], SamplingParams(max_tokens=4)))
        endless = asyncio.ensure_future(engine.generate(["Step 1:"], SamplingParams(
            n=8, temperature=1.0, max_tokens=480, seed=4)))
        await _until(lambda: engine.scheduler.running_rows > 0)
        started = time.monotonic()
        await engine.close(grace_s=0.5)
        closed_in = time.monotonic() - started
        with pytest.raises(EngineClosed, match="shut down"):
            await endless
        with pytest.raises(EngineError, match="closed"):
            await engine.generate([PROMPTS[0]], SamplingParams(max_tokens=4))
        return (await short)[0][0], closed_in

    short, closed_in = asyncio.run(run())
    assert short.completion_tokens == 4  # what could finish within the grace period did
    assert closed_in < 5  # the unfinished one was cancelled, not waited for


def test_a_stalled_engine_shows_in_busy_for_s_and_recovers(engine):
    """Readiness reads `busy_for_s`: how long the engine has had work but made no progress. Holding the model lock
    (as a slow adapter load would) stalls the loop; releasing it lets the request finish and the value fall to 0."""
    async def run():
        with engine._lock:
            task = asyncio.ensure_future(engine.generate([PROMPTS[0]], SamplingParams(max_tokens=4)))
            await asyncio.sleep(0.6)
            stalled = engine.busy_for_s
        result = await task
        return stalled, result, engine.busy_for_s

    stalled, result, after = asyncio.run(run())
    assert stalled >= 0.4
    assert result[0][0].completion_tokens == 4 and after == 0.0


def test_ignore_eos_generates_max_tokens(engine):
    """vLLM's `ignore_eos` (what load generators such as guidellm send): exactly max_tokens, finish 'length'."""
    async def run():
        natural = await engine.generate([PROMPTS[0]], SamplingParams(max_tokens=200))
        forced = await engine.generate([PROMPTS[0]], SamplingParams(max_tokens=200, ignore_eos=True))
        return natural[0][0], forced[0][0]

    natural, forced = asyncio.run(run())
    assert natural.finish_reason == "stop" and natural.completion_tokens < 200
    assert forced.completion_tokens == 200 and forced.finish_reason == "length"
