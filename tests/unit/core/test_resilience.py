"""lema.core.resilience: the retry loop (tenacity) and the circuit breaker around upstream calls."""

from __future__ import annotations

import asyncio
import time

import pytest

from lema.core.resilience import (
    CircuitBreaker,
    CircuitOpenError,
    RetryableError,
    RetryPolicy,
    call_with_retries,
)

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.01)


class Upstream:
    """An upstream that fails `failures` times with `error`, then answers; it counts the calls it gets."""

    def __init__(self, failures: int, error: BaseException | None = None):
        self.failures, self.calls = failures, 0
        self.error = error or RetryableError("503 from upstream")

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def run(coro):
    return asyncio.run(coro)


def test_retryable_failures_are_retried_until_an_answer():
    upstream, retries = Upstream(failures=2), []
    assert run(call_with_retries(upstream, FAST, on_retry=lambda n, exc: retries.append(n))) == "ok"
    assert upstream.calls == 3
    assert retries == [1, 2]


def test_the_last_failure_is_raised_after_max_attempts():
    upstream = Upstream(failures=10)
    with pytest.raises(RetryableError, match="503"):
        run(call_with_retries(upstream, FAST))
    assert upstream.calls == FAST.max_attempts


def test_other_errors_are_not_retried():
    upstream = Upstream(failures=1, error=ValueError("a bug, not an outage"))
    with pytest.raises(ValueError):
        run(call_with_retries(upstream, FAST))
    assert upstream.calls == 1


def test_retry_after_is_followed_and_capped():
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.5, max_delay_s=20.0)
    assert policy.delay(1, 2.5) == 2.5
    assert policy.delay(1, 600.0) == 20.0
    assert policy.delay(1, -3.0) == 0.0
    assert 0.25 <= policy.delay(2, None) <= 1.5  # 0.5 * 2, jittered by 0.5x..1.5x


def test_a_retry_that_would_sleep_past_the_deadline_is_not_made():
    upstream = Upstream(failures=5, error=RetryableError("429", retry_after_s=10.0))
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.001, max_delay_s=30.0)
    started = time.monotonic()
    with pytest.raises(RetryableError, match="429"):
        run(call_with_retries(upstream, policy, deadline=started + 1.0))
    assert upstream.calls == 1
    assert time.monotonic() - started < 1.0  # it did not sleep the 10 s Retry-After


def test_an_open_circuit_stops_retries_and_fails_fast_after():
    breaker = CircuitBreaker(threshold=2, cooldown_s=60.0)
    upstream = Upstream(failures=10)
    with pytest.raises(RetryableError):
        run(call_with_retries(upstream, FAST, breaker=breaker))
    assert upstream.calls == 2 and breaker.state == "open"
    with pytest.raises(CircuitOpenError, match="circuit open"):
        run(call_with_retries(upstream, FAST, breaker=breaker))
    assert upstream.calls == 2  # refused without calling the upstream


def test_a_half_open_trial_that_is_cancelled_reopens_the_circuit():
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, cooldown_s=5.0, clock=lambda: now[0])
    with pytest.raises(RetryableError):
        run(call_with_retries(Upstream(failures=1), FAST, breaker=breaker))
    now[0] = 6.0
    assert breaker.state == "half_open"
    with pytest.raises(asyncio.CancelledError):
        run(call_with_retries(Upstream(failures=1, error=asyncio.CancelledError()), FAST, breaker=breaker))
    assert breaker.state == "open"  # a new cool-down, then another trial: never stuck open
    now[0] = 12.0
    assert run(call_with_retries(Upstream(failures=0), FAST, breaker=breaker)) == "ok"
    assert breaker.state == "closed"
