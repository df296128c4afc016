"""Retries with backoff and a circuit breaker, for every call to an upstream we do not control."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from lema.core.errors import Unavailable

T = TypeVar("T")


class CircuitOpenError(Unavailable, RuntimeError):
    """The upstream failed repeatedly; calls fail fast until the cool-down ends."""


class RetryableError(Unavailable, RuntimeError):
    """A failure worth retrying (429, 5xx, timeout, connection), with the server's Retry-After if it sent one."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class RetryPolicy:
    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:  # the server knows best
            return min(max(retry_after_s, 0.0), self.max_delay_s)
        backoff = self.base_delay_s * (2 ** (attempt - 1))
        return min(backoff * (0.5 + random.random()), self.max_delay_s)  # jitter avoids thundering herds


class CircuitBreaker:
    """Closed -> open after `threshold` consecutive failures -> half-open after `cooldown_s` (one trial call)."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def before_call(self) -> None:
        state = self.state
        if state == "open" or (state == "half_open" and self._trial_in_flight):
            remaining = self.cooldown_s - (self._clock() - (self._opened_at or 0))
            raise CircuitOpenError(
                f"upstream circuit open after {self._failures} consecutive failures; retry in {max(remaining, 0):.0f}s"
            )
        if state == "half_open":
            self._trial_in_flight = True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_abandoned(self) -> None:
        """The call ended with no verdict on the upstream (the caller's deadline or cancellation, an unexpected
        error). A half-open trial still ends: the circuit re-opens with a new cool-down, so another trial follows;
        otherwise the trial would stay "in flight" and the circuit open for good."""
        if self._trial_in_flight:
            self._trial_in_flight = False
            self._opened_at = self._clock()

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        if self._failures >= self.threshold or self._opened_at is not None:
            self._opened_at = self._clock()


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    breaker: CircuitBreaker | None = None,
    deadline: float | None = None,
    on_retry: Callable[[int, RetryableError], None] | None = None,
) -> T:
    """Run `call`, retrying RetryableError with backoff (tenacity's loop), never past `deadline` (a
    time.monotonic() value). A retry that would sleep past the deadline, or that the breaker refuses, is not made:
    the last failure is raised as is."""

    async def attempt() -> T:
        if breaker is not None:
            breaker.before_call()  # CircuitOpenError is not retryable: it ends the loop at once
        try:
            result = await call()
        except RetryableError:
            if breaker is not None:
                breaker.record_failure()
            raise
        except BaseException:  # cancelled, past the caller's deadline, or not an upstream fault
            if breaker is not None:
                breaker.record_abandoned()
            raise
        if breaker is not None:
            breaker.record_success()
        return result

    def wait(state: RetryCallState) -> float:
        return policy.delay(state.attempt_number, state.outcome.exception().retry_after_s)

    def stop(state: RetryCallState) -> bool:  # tenacity computes the wait first: upcoming_sleep is this retry's
        out_of_time = deadline is not None and time.monotonic() + state.upcoming_sleep >= deadline
        circuit_open = breaker is not None and breaker.state == "open"
        return state.attempt_number >= policy.max_attempts or out_of_time or circuit_open

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(state.attempt_number, state.outcome.exception())

    retrying = AsyncRetrying(retry=retry_if_exception_type(RetryableError), wait=wait, stop=stop,
                             before_sleep=before_sleep, reraise=True)
    return await retrying(attempt)
