"""Iteration-level (continuous) batching over a transformers causal LM: requests join and leave the running batch at
every decoding step.

The shape is TGI's server for generic causal LMs (`CausalLMBatch.concatenate` / `filter`): one worker thread owns
a running batch, a left-padded KV cache with one row per sequence (a prompt's sample). At every step it

1. admits waiting sequences: they are prefilled together as one left-padded batch and their cache rows are
   appended to the running batch's (the narrower cache is padded on the left, the attention mask hides the pad);
2. runs one decoding step for every running row, each row on its own adapter (PEFT's per-row `adapter_names`
   when the batch mixes adapters), samples each row with its own request's temperature, top_p and generator;
3. lets finished rows (end token, stop string, max_tokens, a cancelled request) leave at once, and trims the
   cache's leading columns that only padding uses.

Fairness: a request's sequences (prompts x n) are admitted round-robin with every other waiting request's, and when
the batch is full while a request has no row running, the request holding the most rows gives up its newest one
(preemption by recompute, as vLLM does: the row's tokens so far are prefilled again when it is readmitted, so its
output is what it would have been). A lone heavy request still fills the batch; a short one that arrives while it
runs starts within a step or two.

transformers' own `ContinuousBatchingManager` (5.19) was measured first on the same workload: on this CPU it ran
at a quarter of plain `generate()` (bench/RESULTS.md, 'Continuous batching'), so lema keeps this small scheduler.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lema.core.engines.base import Completion, EngineError, SamplingParams, TokenLogprob
from lema.core.engines.stopping import first_stop
from lema.core.errors import InvalidInput, Unavailable

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class EngineBusy(Unavailable, EngineError):
    """The engine's queue is full: 503 with Retry-After (a client retries, a balancer tries another replica)."""


class EngineClosed(Unavailable, EngineError):
    """The engine is shutting down: a request it has not finished, or a new one, answers 503 (retry elsewhere)."""


class TooManySequences(InvalidInput, EngineError):
    """One request asks for more sequences (prompts x n) than the engine lets one request hold."""


@dataclass(eq=False)
class Request:
    """One generate() call: its prompts (token ids), sampling, adapter and where its answer goes."""

    prompt_ids: list[list[int]]
    params: SamplingParams
    adapter: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    # Streaming: called on `loop` with each step's (choice, text, prompt tokens, tokens so far) deltas (the scheduler makes one thread hop per
    # event loop and step, however many requests stream on it).
    on_text: Callable[[list[tuple[int, str]]], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    sequences: list[Sequence] = field(default_factory=list)
    pending: collections.deque = field(default_factory=collections.deque)  # sequences not in the batch
    running: int = 0
    unfinished: int = 0

    @property
    def samples(self) -> int:
        """Sequences generated per prompt: greedy decoding gives one answer, repeated n times (OpenAI's semantics)."""
        return 1 if self.params.greedy else self.params.n

    def finish(self, result) -> None:
        self._settle(lambda future: future.set_result(result))

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self._settle(lambda future: future.cancel())
        else:
            self._settle(lambda future: future.set_exception(exc))

    def _settle(self, action) -> None:
        def apply() -> None:
            if not self.future.done():
                action(self.future)

        try:
            self.loop.call_soon_threadsafe(apply)
        except RuntimeError:  # the caller's event loop is gone: nobody is waiting
            pass


@dataclass(eq=False)
class Sequence:
    """One row: a prompt's sample. `generated` survives a preemption (it is prefilled again on readmission)."""

    request: Request
    prompt: int
    sample: int
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per generated token, when asked
    prompt_logprobs: tuple | None = None  # computed at the first prefill, when asked
    generator: Any = None  # torch.Generator for a sampled row
    finish_reason: str | None = None
    # Incremental detokenisation (TGI's decode_token): text is only tracked for rows that stream or have stop
    # strings; the final text is always decoded whole.
    text: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    streamed: int = 0  # characters of `text` sent to the client

    @property
    def tracks_text(self) -> bool:
        return self.request.on_text is not None or bool(self.request.params.stop)

    def input_ids(self) -> list[int]:
        return self.request.prompt_ids[self.prompt] + self.generated


class Scheduler:
    """The worker thread and its running batch. `model()` is read at every step (loading the first adapter wraps
    the model in a PeftModel); the engine's `lock` is held for one step at a time, so adapter loads and unloads
    happen between steps while requests keep generating."""

    def __init__(self, *, model: Callable[[], Any], tokenizer, device: str, end_ids: set[int],
                 lock: threading.Lock, tokenizer_lock: threading.Lock, loaded_adapters: Callable[[], set[str]],
                 max_rows: int = 32, max_waiting: int | None = None, max_sequences_per_request: int | None = None,
                 max_prefill_tokens: int = 4096, observer=None):
        self._model, self.tokenizer, self.device = model, tokenizer, device
        self._end_ids, self._lock, self._tokenizer_lock = end_ids, lock, tokenizer_lock
        self._loaded_adapters = loaded_adapters
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self.max_sequences_per_request = max_sequences_per_request
        # Prefill tokens admitted in one step: a wave of long prompts is spread over a few steps instead of stalling
        # every running row for one long forward pass (at least one sequence is admitted per step).
        self.max_prefill_tokens = max_prefill_tokens
        self.observer = observer  # optional: .on_step(rows, waiting) and .on_first_token(seconds)
        self._waiting: collections.deque[Request] = collections.deque()  # requests with pending sequences
        self._changed = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._batch = _RunningBatch()
        self._active: set[Request] = set()
        self._last_progress: float | None = None
        self._system_random = random.SystemRandom()
        self._pending_logprobs: dict[int, TokenLogprob] = {}  # the last _sample's entries, by id(sequence)
        # Counters for tests and benchmarks.
        self.stats = {"requests": 0, "steps": 0, "prefills": 0, "preemptions": 0, "max_rows_seen": 0,
                      "tokens": 0}

    # -- submission ------------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        sequences = [Sequence(request, p, s) for p in range(len(request.prompt_ids)) for s in range(request.samples)]
        if self.max_sequences_per_request and len(sequences) > self.max_sequences_per_request:
            raise TooManySequences(
                f"prompts x n: this request asks for {len(sequences)} sequences ({len(request.prompt_ids)} prompts x "
                f"n={request.params.n}); at most {self.max_sequences_per_request} per request")
        if not request.params.greedy:
            import torch

            for seq in sequences:
                seed = (self._system_random.getrandbits(62) if request.params.seed is None
                        else hash((request.params.seed, seq.prompt, seq.sample)) & (2**62 - 1))
                seq.generator = torch.Generator(device=self.device).manual_seed(seed)
        request.sequences, request.pending = sequences, collections.deque(sequences)
        request.unfinished = len(sequences)
        with self._changed:
            if self._closed:
                raise EngineClosed("the engine is closed (shutting down); retry on another replica")
            if self.max_waiting is not None and self.waiting_sequences + len(sequences) > self.max_waiting:
                raise EngineBusy(f"the engine's queue is full ({self.waiting_sequences} sequences waiting, at most "
                                 f"{self.max_waiting}); retry shortly")
            self._waiting.append(request)
            self._active.add(request)
            self.stats["requests"] += 1
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="lema-transformers", daemon=True)
                self._worker.start()
            self._changed.notify()

    def cancel(self, request: Request) -> None:
        request.cancelled.set()
        with self._changed:
            self._changed.notify()

    @property
    def waiting_sequences(self) -> int:
        return sum(len(r.pending) for r in self._waiting)

    @property
    def running_rows(self) -> int:
        return len(self._batch.rows)

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def stalled_for_s(self) -> float:
        """Seconds since the last step finished while there was work (0 when idle): a wedged engine grows it."""
        since = self._last_progress
        return time.monotonic() - since if since is not None and self._active else 0.0

    # -- the worker ------------------------------------------------------------------------------------
    def _serve(self) -> None:
        """Step until no work has come for a second (then the thread ends, so an engine nobody closes does not
        keep a thread, and its model, alive)."""
        while True:
            with self._changed:
                if not self._batch.rows and not self._waiting:
                    self._last_progress = None
                    self._changed.wait(timeout=1.0)
                    if not self._batch.rows and not self._waiting:
                        self._worker = None
                        return
                self._drop_cancelled()
                admitted = self._admit()
            if self._last_progress is None:
                self._last_progress = time.monotonic()
            try:
                self._step(admitted)
            except Exception as exc:  # noqa: BLE001 - every request in the batch gets the failure
                self._fail_all(exc if isinstance(exc, EngineError) else EngineError(f"generation failed: {exc}"))
            self._last_progress = time.monotonic()

    def _drop_cancelled(self) -> None:
        """With the condition held: cancelled requests leave the queue and the batch."""
        gone = [r for r in self._active if r.cancelled.is_set()]
        if not gone:
            return
        for request in gone:
            request.pending.clear()
            self._active.discard(request)
            request.fail(asyncio.CancelledError())
        self._waiting = collections.deque(r for r in self._waiting if not r.cancelled.is_set())
        self._batch.keep([i for i, seq in enumerate(self._batch.rows) if not seq.request.cancelled.is_set()])

    def _admit(self) -> list[Sequence]:
        """With the condition held: the sequences that join the batch this step, round-robin across waiting requests
        (in arrival order), within the free rows and the prefill budget; preempts for a starved request."""
        free = self.max_rows - len(self._batch.rows)
        starved = [r for r in self._waiting if r.running == 0 and r.pending]
        if free < len(starved):
            free += self._preempt(len(starved) - free)
        admitted: list[Sequence] = []
        budget = self.max_prefill_tokens
        # Starved requests first (in arrival order), then round-robin: a preempted row must not take back the row
        # it just gave up.
        self._waiting = collections.deque(starved + [r for r in self._waiting if r not in starved])
        while free > 0 and self._waiting:
            progressed = False
            for request in list(self._waiting):
                if free == 0:
                    break
                if not request.pending:
                    continue
                cost = len(request.prompt_ids[request.pending[0].prompt]) + len(request.pending[0].generated)
                if admitted and cost > budget:
                    continue
                seq = request.pending.popleft()
                request.running += 1
                admitted.append(seq)
                free -= 1
                budget -= cost
                progressed = True
            self._waiting = collections.deque(r for r in self._waiting if r.pending)
            if not progressed:
                break
        return admitted

    def _preempt(self, wanted: int) -> int:
        """Free up to `wanted` rows from the requests holding the most (never below one row each); the rows go back
        to the front of their request's queue with the tokens they generated. Returns the rows freed."""
        freed = 0
        while freed < wanted:
            holders = collections.Counter(seq.request for seq in self._batch.rows)
            request, held = max(holders.items(), key=lambda item: item[1], default=(None, 0))
            if request is None or held <= 1:
                break
            index = max(i for i, seq in enumerate(self._batch.rows) if seq.request is request)
            seq = self._batch.rows[index]
            self._batch.keep([i for i in range(len(self._batch.rows)) if i != index])
            request.running -= 1
            request.pending.appendleft(seq)
            if request not in self._waiting:
                self._waiting.appendleft(request)
            self.stats["preemptions"] += 1
            freed += 1
        return freed

    def _step(self, admitted: list[Sequence]) -> None:
        import torch

        finished = 0
        with self._lock, torch.inference_mode():
            model = self._model()
            loaded = self._loaded_adapters()
            if admitted:
                # The joining rows get their first token from the prefill and their second from the decoding step
                # below, which the running rows take as usual: a request joining never costs them a step.
                self._prefill(model, admitted, loaded)
                finished += self._finish_rows()
            if self._batch.rows:
                self._decode(model, loaded)
        self.stats["steps"] += 1
        self.stats["max_rows_seen"] = max(self.stats["max_rows_seen"], len(self._batch.rows))
        finished += self._finish_rows()
        if self.observer is not None:
            self.observer.on_step(len(self._batch.rows) + finished, self.waiting_sequences)

    def _forward(self, model, loaded: set[str], rows: list[Sequence], **inputs):
        """One forward pass, each row on its adapter: the adapter set active when the rows share one, PEFT's
        per-row `adapter_names` when they mix."""
        import contextlib

        adapters = {seq.request.adapter for seq in rows}
        if not loaded:
            return model(**inputs)
        if len(adapters) == 1:
            (adapter,) = adapters
            if adapter is None:
                context = model.disable_adapter()
            else:
                if model.active_adapter != adapter:
                    model.set_adapter(adapter)
                context = contextlib.nullcontext()
            with context:
                return model(**inputs)
        names = [seq.request.adapter or BASE_ADAPTER for seq in rows]
        return model(**inputs, adapter_names=names)

    def _prefill(self, model, admitted: list[Sequence], loaded: set[str]) -> None:
        import torch
        from transformers import DynamicCache

        inputs = [seq.input_ids() for seq in admitted]
        width = max(map(len, inputs))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(inputs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, tokens in enumerate(inputs):
            ids[row, width - len(tokens):] = torch.tensor(tokens)
            mask[row, width - len(tokens):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        scored = [seq.request.params.prompt_logprobs is not None and seq.prompt_logprobs is None for seq in admitted]
        out = self._forward(model, loaded, admitted, input_ids=ids, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True, logits_to_keep=0 if any(scored) else 1)
        for row, seq in enumerate(admitted):
            if scored[row]:
                tokens = inputs[row][:len(seq.request.prompt_ids[seq.prompt])]
                seq.prompt_logprobs = self._prompt_logprobs(out.logits[row, width - len(inputs[row]):], tokens,
                                                            seq.request.params.prompt_logprobs)
        tokens = self._sample(out.logits[:, -1, :], admitted)
        self.stats["prefills"] += 1
        self._batch.join(admitted, out.past_key_values, mask, positions[:, -1] + 1, tokens)
        now = time.monotonic()
        for seq, token in zip(admitted, tokens):
            self._append(seq, token, now)

    def _decode(self, model, loaded: set[str]) -> None:
        import torch

        batch, rows = self._batch, self._batch.rows
        mask = torch.cat([batch.mask, batch.mask.new_ones((len(rows), 1))], 1)
        out = self._forward(model, loaded, rows, input_ids=batch.next_tokens[:, None], attention_mask=mask,
                            position_ids=batch.positions[:, None], past_key_values=batch.cache, use_cache=True)
        batch.mask, batch.positions = mask, batch.positions + 1
        tokens = self._sample(out.logits[:, -1, :], rows)
        batch.next_tokens = torch.tensor(tokens, dtype=torch.long, device=mask.device)
        now = time.monotonic()
        for seq, token in zip(rows, tokens):
            self._append(seq, token, now)

    def _sample(self, logits, rows: list[Sequence]) -> list[int]:
        """Each row's next token: greedy rows take the argmax, sampled rows draw with their own temperature, top_p
        and generator (so a seeded request's samples do not depend on what else is in the batch)."""
        import torch

        chosen = logits.argmax(dim=-1).tolist()
        self._pending_logprobs = {}
        for i, seq in enumerate(rows):
            params = seq.request.params
            if params.greedy:
                continue
            row = logits[i].float() / params.temperature
            probs = torch.softmax(row, dim=-1)
            if params.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
                outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
                sorted_probs[outside] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            chosen[i] = int(torch.multinomial(probs, 1, generator=seq.generator))
        wanted = [i for i, seq in enumerate(rows) if seq.request.params.logprobs is not None]
        if wanted:
            logprobs = torch.log_softmax(logits[wanted].float(), dim=-1)
            for j, i in enumerate(wanted):
                self._pending_logprobs[id(rows[i])] = _token_logprob(logprobs[j], chosen[i],
                                                                     rows[i].request.params.logprobs)
        return chosen

    @staticmethod
    def _prompt_logprobs(logits, tokens: list[int], top: int) -> tuple:
        """Teacher-forced: each prompt token's log-probability given the ones before it (None for the first)."""
        import torch

        logprobs = torch.log_softmax(logits[:len(tokens) - 1].float(), dim=-1)
        return (None, *(_token_logprob(logprobs[i], tokens[i + 1], top) for i in range(len(tokens) - 1)))

    def _append(self, seq: Sequence, token: int, now: float) -> None:
        request = seq.request
        if request.first_token_at is None:
            request.first_token_at = now
            if self.observer is not None:
                self.observer.on_first_token(now - request.submitted)
        if token in self._end_ids and not request.params.ignore_eos:
            seq.finish_reason = "stop"
            return
        seq.generated.append(token)
        if request.params.logprobs is not None:
            seq.logprobs.append(self._pending_logprobs[id(seq)])
        self.stats["tokens"] += 1
        if seq.tracks_text:
            self._detokenize(seq)
            cut = first_stop(seq.text, request.params.stop) if request.params.stop else -1
            if cut != -1:
                seq.finish_reason = "stop"
        if seq.finish_reason is None and len(seq.generated) >= request.params.max_tokens:
            seq.finish_reason = "length"

    def _detokenize(self, seq: Sequence) -> None:
        """TGI's incremental decoding: decode a short window before and after the new token and keep the difference,
        held back while it ends in half a character."""
        ids = seq.generated
        prefix = self.tokenizer.decode(ids[seq.prefix_offset:seq.read_offset], skip_special_tokens=True)
        current = self.tokenizer.decode(ids[seq.prefix_offset:], skip_special_tokens=True)
        if len(current) > len(prefix) and not current.endswith("\ufffd"):
            seq.text += current[len(prefix):]
            seq.prefix_offset, seq.read_offset = seq.read_offset, len(ids)

    def _finish_rows(self) -> int:
        """Stream what each row can release, let finished rows leave, settle finished requests. Returns the rows
        that left."""
        rows = self._batch.rows
        deltas: dict[Request, list[tuple[int, str]]] = collections.defaultdict(list)
        for seq in rows:
            if seq.request.on_text is not None:
                text = self._releasable(seq)
                if text:
                    deltas[seq.request].append((seq, text))
        by_loop: dict[asyncio.AbstractEventLoop, list] = collections.defaultdict(list)
        for request, items in deltas.items():
            by_loop[request.loop].append(
                (request.on_text, [(choice, text, len(request.prompt_ids[seq.prompt]), len(seq.generated))
                                   for seq, text in items for choice in self._choices(seq)]))
        for loop, calls in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, calls)
            except RuntimeError:  # that event loop is closed: nobody is listening
                pass
        keep = [i for i, seq in enumerate(rows) if seq.finish_reason is None]
        done = [seq for seq in rows if seq.finish_reason is not None]
        if not done:
            return 0
        self._batch.keep(keep)
        for seq in done:
            request = seq.request
            request.running -= 1
            request.unfinished -= 1
            if request.unfinished == 0:
                with self._changed:
                    self._active.discard(request)
                request.finish(self._results(request))
        return len(done)

    def _releasable(self, seq: Sequence) -> str:
        """The text of a streaming row that can no longer change: up to a stop string, or all but the last
        len(longest stop) - 1 characters while the row runs; everything once it ended."""
        stop = seq.request.params.stop
        cut = first_stop(seq.text, stop) if stop else -1
        if cut != -1:
            ready = cut
        elif seq.finish_reason is not None:
            ready = len(seq.text)
        else:
            ready = len(seq.text) - (max((len(s) for s in stop), default=1) - 1)
        if ready <= seq.streamed:
            return ""
        text, seq.streamed = seq.text[seq.streamed:ready], ready
        return text

    @staticmethod
    def _choices(seq: Sequence) -> list[int]:
        """The choice indices a sequence answers: `n` of them for a greedy row (its answer repeated)."""
        params = seq.request.params
        copies = params.n // seq.request.samples
        return [seq.prompt * params.n + seq.sample * copies + c for c in range(copies)]

    def _results(self, request: Request) -> list[list[Completion]]:
        from lema.core.engines.stopping import cut_at_stop

        out: list[list[Completion]] = [[] for _ in request.prompt_ids]
        for seq in request.sequences:
            with self._tokenizer_lock:
                text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
            text, finish = cut_at_stop(text, request.params.stop, seq.finish_reason or "length")
            completion = Completion(
                text=text, token_ids=tuple(seq.generated), finish_reason=finish,
                prompt_tokens=len(request.prompt_ids[seq.prompt]), completion_tokens=len(seq.generated),
                logprobs=tuple(seq.logprobs) if request.params.logprobs is not None else None,
                prompt_logprobs=seq.prompt_logprobs,
                prompt_token_ids=tuple(request.prompt_ids[seq.prompt]) if seq.prompt_logprobs is not None else ())
            out[seq.prompt] += [completion] * (request.params.n // request.samples)
        return out

    def _fail_all(self, exc: EngineError) -> None:
        with self._changed:
            requests = {seq.request for seq in self._batch.rows}
            self._batch = _RunningBatch()
            for request in requests:
                request.pending.clear()
                self._active.discard(request)
            self._waiting = collections.deque(r for r in self._waiting if r not in requests)
        for request in requests:
            request.fail(exc)

    # -- shutdown --------------------------------------------------------------------------------------
    def close_intake(self) -> None:
        with self._changed:
            self._closed = True

    def drain(self, grace_s: float) -> int:
        """Wait up to `grace_s` for the requests in flight to finish, then cancel the rest; returns how many were
        cancelled. New requests are refused from the start."""
        self.close_intake()
        deadline = time.monotonic() + grace_s
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)
        left = list(self._active)
        for request in left:
            request.cancelled.set()
            request.fail(EngineClosed("the engine shut down before this request finished; retry on another replica"))
        with self._changed:
            self._changed.notify()
            worker = self._worker
        if worker is not None:
            worker.join(timeout=30)
        return len(left)


def _token_logprob(logprobs, token: int, top: int) -> TokenLogprob:
    """`token`'s entry from one position's log-probabilities, with the `top` most likely alternatives."""
    alternatives = ()
    if top:
        values, indices = logprobs.topk(top)
        alternatives = tuple(zip(indices.tolist(), values.tolist()))
    return TokenLogprob(token, float(logprobs[token]), alternatives)


def _deliver(calls: list) -> None:
    for on_text, items in calls:
        on_text(items)


class _RunningBatch:
    """The rows generating now and their left-padded KV cache: `mask` covers the cache's columns, `positions` is
    each row's next position id, `next_tokens` the token each row feeds to the next step."""

    def __init__(self) -> None:
        self.rows: list[Sequence] = []
        self.cache = None
        self.mask = None
        self.positions = None
        self.next_tokens = None

    def join(self, rows: list[Sequence], cache, mask, positions, tokens: list[int]) -> None:
        import torch

        next_tokens = torch.tensor(tokens, dtype=torch.long, device=mask.device)
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            self.positions, self.next_tokens = positions, next_tokens
            return
        width = max(self.mask.shape[1], mask.shape[1])
        self.cache = _concat_caches(self.cache, self.mask.shape[1], cache, mask.shape[1], width)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)], 0)
        self.positions = torch.cat([self.positions, positions])
        self.next_tokens = torch.cat([self.next_tokens, next_tokens])
        self.rows += rows

    def keep(self, indices: list[int]) -> None:
        """Only these rows stay (in this order); leading cache columns that no remaining row uses are dropped."""
        import torch

        if len(indices) == len(self.rows):
            return
        if not indices:
            self.__init__()
            return
        index = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[i] for i in indices]
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.next_tokens = self.next_tokens.index_select(0, index)
        unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        self.mask = self.mask[:, unused:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, unused:]
            layer.values = layer.values.index_select(0, index)[:, :, unused:]


def _pad_left(tensor, width: int):
    """A (rows, columns) mask or a (rows, heads, columns, dim) cache tensor padded with zeros on the left."""
    import torch

    missing = width - tensor.shape[-1] if tensor.dim() == 2 else width - tensor.shape[2]
    if missing == 0:
        return tensor
    if tensor.dim() == 2:
        return torch.cat([tensor.new_zeros((tensor.shape[0], missing)), tensor], 1)
    shape = (tensor.shape[0], tensor.shape[1], missing, tensor.shape[3])
    return torch.cat([tensor.new_zeros(shape), tensor], 2)


def _concat_caches(a, a_width: int, b, b_width: int, width: int):
    """Two caches' rows in one, both padded on the left to `width` columns (full-attention layers only)."""
    import torch

    for layer_a, layer_b in zip(a.layers, b.layers):
        if type(layer_a).__name__ != "DynamicLayer":
            raise EngineError(f"continuous batching needs full-attention cache layers; this model has "
                              f"{type(layer_a).__name__} (serve it with the vllm engine)")
        layer_a.keys = torch.cat([_pad_left(layer_a.keys, width), _pad_left(layer_b.keys, width)], 0)
        layer_a.values = torch.cat([_pad_left(layer_a.values, width), _pad_left(layer_b.values, width)], 0)
    return a
