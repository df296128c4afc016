"""The transformers (+ peft) engine: no extra install, CPU or GPU, batching across requests, streaming, runtime LoRA.

Adapters use peft's own `PeftModel` API (`load_adapter`, `set_adapter`, `disable_adapter`, `delete_adapter`):
transformers' `model.set_adapter` needs peft >= 0.22, which the registries do not serve. One model serves every
request: a worker thread takes the requests waiting for it in groups (`_Work.key` says which can share a batch) and
generates each group in one `generate()` call, so the event loop stays free and concurrent callers share batches.
It is static batching: a batch runs until its longest row ends (vLLM's continuous batching does better on a GPU).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from lema.core.engines.base import (
    AdapterInfo,
    Completion,
    ContextLengthError,
    EngineError,
    Prompt,
    SamplingParams,
    StreamDelta,
)
from lema.core.engines.stopping import cut_at_stop, end_token_ids, first_stop


def _through_last_end(input_ids: list[int], mask: list[int], end_ids: set[int]) -> list[int]:
    """`mask` with the positions after the last end token it covers cleared (unchanged when it covers none)."""
    ends = [i for i, (token, m) in enumerate(zip(input_ids, mask)) if m and token in end_ids]
    return mask if not ends else [m if i <= ends[-1] else 0 for i, m in enumerate(mask)]


class TransformersEngine:
    name = "transformers"

    def __init__(
        self,
        model: str,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 32,
        threads: int | None = None,
        merge_adapter: str | None = None,
        batch_wait_s: float = 0.03,
    ):
        """`merge_adapter`: a PEFT adapter folder merged into the weights at load time, for a model that serves
        one adapter only (evaluation): an unmerged LoRA adds about 40% to generation time."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads or self.device == "cpu":
            # One thread by default on CPU: lema runs several processes side by side, and measured here a
            # 2-thread generate slowed from ~700 to 6-22 tokens/s whenever another process kept a core busy
            # (OpenMP threads waiting on each other). Pass threads=N for a machine of your own.
            torch.set_num_threads(threads or 1)
        # float32 on CPU: this CPU has no native bf16 and bf16 matmuls were ~26x slower (README, 'The CPU stack').
        torch_dtype = torch.float32 if (dtype == "auto" and self.device == "cpu") else (
            "auto" if dtype == "auto" else getattr(torch, dtype)
        )
        tokenizer = AutoTokenizer.from_pretrained(model)
        loaded = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        if merge_adapter:
            from peft import PeftModel

            loaded = PeftModel.from_pretrained(loaded, merge_adapter).merge_and_unload().eval()
        self._attach(loaded, tokenizer, batch_size, batch_wait_s)

    @classmethod
    def from_loaded(cls, model, tokenizer, model_id: str = "in-memory", batch_size: int = 32,
                    batch_wait_s: float = 0.0) -> TransformersEngine:
        """An engine over a model already in memory (lema-tiny's pretraining evaluates its live weights): nothing
        is loaded, moved or converted, and torch's thread count stays the caller's. The model is put in eval mode
        and the tokenizer pads on the left; a caller that goes on training sets `model.train()` again."""
        engine = cls.__new__(cls)
        engine.model_id = model_id
        engine.device = str(next(model.parameters()).device)
        engine._attach(model.eval(), tokenizer, batch_size, batch_wait_s)
        return engine

    def _attach(self, model, tokenizer, batch_size: int, batch_wait_s: float) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s  # how long a short batch waits for more requests before it starts
        # The longest sequence the model was built for: prompt + max_tokens beyond it is refused, not generated
        # (positions past it are out of distribution, and a huge prompt would hold the engine for minutes).
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self._adapters: dict[str, AdapterInfo] = {}
        self._lock = threading.Lock()  # the model: a generating group, an adapter load or unload
        # A fast tokenizer changes its padding and truncation state on every call and is not safe to call from two
        # threads at once (the context check runs beside a generating batch).
        self._tokenizer_lock = threading.Lock()
        self._waiting: collections.deque[_Work] = collections.deque()
        self._waiting_changed = threading.Condition()
        self._worker: threading.Thread | None = None
        self._in_flight: set[_Work] = set()
        self._busy_since: float | None = None
        self._last_group_prompts = 1
        self._last_group_end = 0.0
        self._closed = False
        # Counters for tests and benchmarks: generate() calls served, groups and model batches run, and the
        # decoding steps of the last batch (a cancelled batch stops early).
        self.stats = {"requests": 0, "groups": 0, "batches": 0, "last_batch_steps": 0}

    # -- prompts -----------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        from lema.core.rendering import render_prompt

        # A model without a chat template (a base LLM) gets `bos + text`, as its raw-framed training rows were.
        return render_prompt(self.tokenizer, prompt)

    # -- adapters ----------------------------------------------------------------------------------
    async def load_adapter(self, name: str, path: str) -> AdapterInfo:
        return await asyncio.to_thread(self._load_adapter, name, path)

    def _load_adapter(self, name: str, path: str) -> AdapterInfo:
        import json

        from peft import PeftModel

        if name in self._adapters:
            raise EngineError(f"adapter name {name!r} is already loaded; give every adapter version a new name")
        config_file = Path(path) / "adapter_config.json"
        if not config_file.exists():
            raise EngineError(f"{path} is not a PEFT adapter folder (no adapter_config.json)")
        with self._lock:
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(path, adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
            except Exception as exc:
                self._forget_partial(name)  # peft may have registered the config before the weights failed
                raise EngineError(f"could not load adapter {name!r}: {type(exc).__name__}: {exc}") from exc
        rank = int(json.loads(config_file.read_text()).get("r", 0))
        info = AdapterInfo(name=name, path=str(path), rank=rank)
        self._adapters[name] = info
        return info

    def _forget_partial(self, name: str) -> None:
        """A load that failed half way leaves no trace (called with the lock held)."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel) and name in getattr(self.model, "peft_config", {}):
            try:
                self.model.delete_adapter(name)
            except Exception:  # noqa: BLE001 - half-registered: drop the config entry by hand
                self.model.peft_config.pop(name, None)
            if not self.model.peft_config:
                self.model = self.model.unload()

    async def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise EngineError(f"adapter {name!r} is not loaded")
        # In a worker thread: the lock may be held by a generation in progress.
        await asyncio.to_thread(self._unload_adapter, name)

    def _unload_adapter(self, name: str) -> None:
        with self._lock:
            last = set(self._adapters) == {name}
            self.model.delete_adapter(name)
            if last:
                # peft 0.21 leaves `active_adapter` naming the deleted adapter after the only one goes, and every
                # later base-model generate fails: remove the empty LoRA layers and serve the plain model again.
                self.model = self.model.unload()
            self._adapters.pop(name, None)

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters.values())

    # -- scoring -------------------------------------------------------------------------------------
    async def completion_logprobs(self, rows: list[tuple[str, str]], adapter: str | None = None,
                                  batch_size: int | None = None) -> list[tuple[float, int]]:
        """Per (user prompt, completion) pair: the summed log-probability in nats of the completion's tokens after
        the prompt, framed exactly as a training row (`lema.core.rendering.encode_row`: the chat template's assistant
        turn and its end tokens), and how many tokens that is. One forward pass per batch, teacher-forced."""
        return await asyncio.to_thread(self._completion_logprobs, rows, adapter, batch_size or self.batch_size)

    def _completion_logprobs(self, rows: list[tuple[str, str]], adapter: str | None,
                             batch_size: int) -> list[tuple[float, int]]:

        import torch

        from lema.core.rendering import encode_row

        if adapter is not None and adapter not in self._adapters:
            raise EngineError(f"adapter {adapter!r} is not loaded (loaded: {sorted(self._adapters)})")
        with self._tokenizer_lock:
            encoded = [encode_row(self.tokenizer, prompt, completion) for prompt, completion in rows]
        too_long = [i for i, e in enumerate(encoded) if self.context_length and e.length > self.context_length]
        if too_long:
            raise ContextLengthError(f"row {too_long[0]} has {encoded[too_long[0]].length} tokens, more than the "
                                     f"model's context of {self.context_length}")
        # Score the completion through its end token and no further: a chat template may put a newline after the end
        # token, which training rows carry (so a fine-tuned model predicts it and a model pretrained without it does
        # not, about 10 nats for that one token) but which generation never reaches.
        masks = [_through_last_end(e.input_ids, e.completion_mask, self._eos_ids()) for e in encoded]
        pad = self.tokenizer.pad_token_id
        out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: encoded[i].length)  # similar lengths share a batch
        with self._lock, torch.inference_mode():
            with self._adapter_context(adapter):
                for start in range(0, len(order), batch_size):
                    chunk = order[start:start + batch_size]
                    width = max(encoded[i].length for i in chunk)
                    ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(chunk), width), dtype=torch.long)
                    scored = torch.zeros((len(chunk), width), dtype=torch.bool)
                    for row, i in enumerate(chunk):  # right-padded: positions match an unpadded forward
                        length = encoded[i].length
                        ids[row, :length] = torch.tensor(encoded[i].input_ids)
                        mask[row, :length] = 1
                        scored[row, :length] = torch.tensor(masks[i], dtype=torch.bool)
                    ids, mask, scored = ids.to(self.device), mask.to(self.device), scored.to(self.device)
                    logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                    token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
                    targets = scored[:, 1:]
                    sums = (token_logprobs * targets).sum(dim=1).tolist()
                    counts = targets.sum(dim=1).tolist()
                    for row, i in enumerate(chunk):
                        out[i] = (float(sums[row]), int(counts[row]))
        return out

    # -- generation ----------------------------------------------------------------------------------
    async def generate(
        self, prompts: list[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[list[Completion]]:
        """n completions per prompt. Requests that wait together are generated together (see `_Work.key`); a
        caller that is cancelled (a client gone, a deadline passed) stops its rows at the next decoding step."""
        texts = await self._prepare(prompts, params, adapter)
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        work = _Work(texts, params, adapter, loop, loop.create_future())
        self._submit(work)
        try:
            return await work.future
        except asyncio.CancelledError:
            work.cancelled.set()
            raise

    async def generate_stream(
        self, prompts: list[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[StreamDelta]:
        """`generate`, delivered as the tokens come: text deltas per choice, then each choice's last delta with its
        finish reason and completion. The request shares batches like any other; closing the iterator early (a
        client gone) cancels it. Concatenated deltas equal the completion's text: text that might still turn out
        to be part of a stop string, or half of a multi-byte character, is held back until it cannot."""
        texts = await self._prepare(prompts, params, adapter)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        work = _Work(texts, params, adapter, loop, loop.create_future())
        work.stream = _TokenStream(self, params, lambda item: loop.call_soon_threadsafe(events.put_nowait, item))
        work.future.add_done_callback(lambda _: events.put_nowait(None))
        self._submit(work)
        sent: dict[int, str] = collections.defaultdict(str)
        try:
            while (item := await events.get()) is not None:
                indices, text = item
                for index in indices:
                    sent[index] += text
                    yield StreamDelta(index, text)
            results = work.future.result()  # raises the generation's error, if any
            for prompt_index, samples in enumerate(results):
                for sample, completion in enumerate(samples):
                    index = prompt_index * params.n + sample
                    rest = completion.text[len(sent[index]):] if completion.text.startswith(sent[index]) else ""
                    yield StreamDelta(index, rest, completion.finish_reason, completion)
        finally:
            if not work.future.done():  # the consumer stopped early (a client gone): stop the rows
                work.cancelled.set()
                work.future.cancel()

    async def _prepare(self, prompts: list[Prompt], params: SamplingParams, adapter: str | None) -> list[str]:
        if adapter and adapter not in self._adapters:
            raise EngineError(f"adapter {adapter!r} is not loaded (loaded: {sorted(self._adapters)})")
        texts = [self.render(p) for p in prompts]
        if texts:
            await asyncio.to_thread(self._check_context, texts, params.max_tokens)
        return texts

    def _check_context(self, texts: list[str], max_tokens: int) -> None:
        if self.context_length is None:
            return
        for i, text in enumerate(texts):
            with self._tokenizer_lock:
                length = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if length + max_tokens > self.context_length:
                raise ContextLengthError(
                    f"prompt {i} has {length} tokens; with max_tokens {max_tokens} that is {length + max_tokens} > "
                    f"the model's context of {self.context_length} tokens")

    @property
    def busy_for_s(self) -> float:
        """How long the batch on the model now has been generating (0 when idle): readiness reads it."""
        started = self._busy_since
        return time.monotonic() - started if started is not None else 0.0

    # -- the scheduler: one worker thread takes waiting requests in groups --------------------------
    def _submit(self, work: _Work) -> None:
        with self._waiting_changed:
            if self._closed:
                raise EngineError("the engine is closed")
            self._waiting.append(work)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="lema-transformers", daemon=True)
                self._worker.start()
            self._waiting_changed.notify()

    def _serve(self) -> None:
        """Generate groups of waiting requests until none has come for a second (then the thread ends, so an
        engine nobody closes does not keep a thread, and its model, alive)."""
        while True:
            with self._waiting_changed:
                if not self._waiting:
                    self._waiting_changed.wait(timeout=1.0)
                if not self._waiting:
                    self._worker = None
                    return
                # Clients answered by the last group send their next requests milliseconds apart: until as many
                # prompts wait as the last group had, wait for them (at most batch_wait_s), or groups alternate
                # between one request and all the others. A lone client never waits (its last group was itself),
                # nor does a request arriving at an idle engine (no wave of clients is on its way).
                now = time.monotonic()
                deadline = now + self.batch_wait_s
                recent = now - self._last_group_end < 2 * self.batch_wait_s
                expected = min(self.batch_size, self._last_group_prompts) if recent else 0
                while (sum(len(w.texts) for w in self._waiting) < expected
                       and (left := deadline - time.monotonic()) > 0):
                    self._waiting_changed.wait(timeout=left)
                group = self._take_group()
            self._run_group(group)

    def _take_group(self) -> list[_Work]:
        """The oldest waiting request and every later one that can share its batch (same key, up to batch_size
        prompts); the rest keep their order."""
        first = self._waiting.popleft()
        group, prompts, kept = [first], len(first.texts), collections.deque()
        while self._waiting:
            work = self._waiting.popleft()
            if work.key() == first.key() and prompts + len(work.texts) <= self.batch_size:
                group.append(work)
                prompts += len(work.texts)
            else:
                kept.append(work)
        self._waiting = kept
        return group

    def _run_group(self, group: list[_Work]) -> None:

        import torch

        live = [w for w in group if not w.cancelled.is_set()]
        for work in group:
            if work.cancelled.is_set():
                work.fail(asyncio.CancelledError())
        if not live:
            return
        first = live[0]
        texts = [t for w in live for t in w.texts]
        owners = [(w, i) for w in live for i in range(len(w.texts))]  # per prompt: its request, its index there
        params = dataclasses.replace(first.params, max_tokens=max(w.params.max_tokens for w in live))
        self._busy_since = time.monotonic()
        self._in_flight = set(live)
        self._last_group_prompts = len(texts)
        self.stats["groups"] += 1
        self.stats["requests"] += len(live)
        try:
            with self._lock, torch.inference_mode():
                context = self._adapter_context(first.adapter)
                if params.seed is not None:  # a seeded request is alone in its group (_Work.key)
                    torch.manual_seed(params.seed)
                results: list[list[Completion]] = []
                with context:
                    for start in range(0, len(texts), self.batch_size):
                        end = start + self.batch_size
                        results += self._generate_batch(texts[start:end], params, owners[start:end])
        except Exception as exc:  # noqa: BLE001 - every request of the group gets the failure
            for work in live:
                work.fail(exc if isinstance(exc, EngineError) else EngineError(f"generation failed: {exc}"))
            return
        finally:
            self._busy_since = None
            self._in_flight = set()
            self._last_group_end = time.monotonic()
        offset = 0
        for work in live:
            mine = results[offset : offset + len(work.texts)]
            offset += len(work.texts)
            if work.params.greedy:  # n identical greedy choices (OpenAI's semantics)
                mine = [samples * work.params.n for samples in mine]
            work.finish([[self._clip(c, work.params) for c in samples] for samples in mine])

    def _adapter_context(self, adapter: str | None):
        """With the lock held: the adapter made active, or, for the base model while adapters are loaded, a context
        that disables them."""
        import contextlib

        if adapter:
            self.model.set_adapter(adapter)
            return contextlib.nullcontext()
        return self.model.disable_adapter() if self._adapters else contextlib.nullcontext()

    def _clip(self, completion: Completion, params: SamplingParams) -> Completion:
        """A completion of a group generated further than this request's max_tokens, cut back to it."""
        if completion.completion_tokens <= params.max_tokens:
            return completion
        ids = completion.token_ids[: params.max_tokens]
        text, finish = self._decode(ids, "length", params.stop)
        return dataclasses.replace(completion, text=text, token_ids=ids, finish_reason=finish,
                                   completion_tokens=len(ids))

    def _decode(self, ids, finish: str, stop: tuple[str, ...]) -> tuple[str, str]:
        return cut_at_stop(self.tokenizer.decode(list(ids), skip_special_tokens=True), stop, finish)

    def _generate_batch(self, texts: list[str], params: SamplingParams,
                        owners: list[tuple[_Work, int]]) -> list[list[Completion]]:
        from transformers import StoppingCriteriaList

        with self._tokenizer_lock:
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.device)
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        # Greedy decoding gives one answer per prompt (generated once; `_run_group` repeats it n times).
        generated = 1 if params.greedy else params.n  # sequences generate() returns per prompt
        kwargs = dict(
            max_new_tokens=params.max_tokens,
            num_return_sequences=generated,
            pad_token_id=self.tokenizer.pad_token_id,
            do_sample=not params.greedy,
            stopping_criteria=StoppingCriteriaList([_cancelled_rows([w.cancelled for w, _ in owners], generated)]),
        )
        if any(w.stream is not None for w, _ in owners):
            sinks = [None if w.stream is None else functools.partial(w.stream.token, prompt * generated + sample)
                     for w, prompt in owners for sample in range(generated)]
            kwargs["streamer"] = _row_streamer(sinks)
        if not params.greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        output = self.model.generate(**batch, **kwargs)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        self.stats["batches"] += 1
        self.stats["last_batch_steps"] = int(new_tokens.shape[1])
        eos_ids = self._eos_ids()
        completions: list[list[Completion]] = []
        for i, row in enumerate(new_tokens.tolist()):
            ids, finish = [], "length"
            for token in row:
                if token in eos_ids:
                    finish = "stop"
                    break
                ids.append(token)
            text, finish = self._decode(ids, finish, params.stop)
            if i % generated == 0:
                completions.append([])
            completion = Completion(text=text, token_ids=tuple(ids), finish_reason=finish,
                                    prompt_tokens=int(prompt_lengths[i // generated]),
                                    completion_tokens=len(ids))
            completions[-1].append(completion)
        return completions

    def _eos_ids(self) -> set[int]:
        return end_token_ids(self.model.generation_config.eos_token_id, self.tokenizer)

    async def close(self) -> None:
        """Refuse new requests, stop the ones waiting or generating (at the next decoding step), end the worker."""
        with self._waiting_changed:
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            worker = self._worker
        for work in waiting:
            work.cancelled.set()
            work.fail(EngineError("the engine is closed"))
        for work in list(self._in_flight):
            work.cancelled.set()
        if worker is not None:
            await asyncio.to_thread(worker.join, 60)
        self._adapters.clear()


@dataclass(eq=False)
class _Work:
    """One generate() call waiting for, or in, a group; its caller awaits `future` on its own event loop."""

    texts: list[str]
    params: SamplingParams
    adapter: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)
    stream: _TokenStream | None = None  # generate_stream: receives every token of its rows

    def key(self) -> tuple:
        """Requests with equal keys can share one generate() call: the same adapter and the same decoding (greedy,
        or the same temperature, top_p and n), the same stop strings. max_tokens may differ (a group generates to
        the largest and cuts the others back). A seeded request is alone, so its seed alone decides its samples."""
        p = self.params
        if p.seed is not None:
            return ("seeded", id(self))
        decoding = ("greedy",) if p.greedy else ("sample", p.temperature, p.top_p, p.n)
        return (self.adapter, decoding, p.stop)

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


def _cancelled_rows(flags: list[threading.Event], rows_per_prompt: int):
    """A stopping criterion: the rows of cancelled requests are done now (when every row of the batch is, the
    batch stops and the model is free for the next group)."""
    import torch
    from transformers import StoppingCriteria

    class CancelledRows(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = [flags[row // rows_per_prompt].is_set() for row in range(input_ids.shape[0])]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return CancelledRows()


class _TokenStream:
    """Turns a streaming request's tokens (in the worker thread) into text deltas per row, pushed to its consumer.
    A row's text is decoded again at each token (cheap at these lengths) and released up to what can no longer
    change: eos ends the row; a stop string ends it at the string; the last len(longest stop) - 1 characters and a
    trailing half character wait."""

    def __init__(self, engine: TransformersEngine, params: SamplingParams,
                 push: Callable[[tuple[list[int], str]], object]):
        self.tokenizer, self.eos = engine.tokenizer, engine._eos_ids()
        self.params, self.push = params, push
        self.generated = 1 if params.greedy else params.n
        self.copies = params.n // self.generated
        self.hold = max((len(s) for s in params.stop), default=1) - 1
        self.ids: dict[int, list[int]] = collections.defaultdict(list)
        self.sent: dict[int, int] = collections.defaultdict(int)
        self.done: set[int] = set()

    def token(self, row: int, token: int) -> None:
        if row in self.done:
            return
        if token in self.eos:
            self.done.add(row)
            return
        ids = self.ids[row]
        ids.append(token)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = first_stop(text, self.params.stop)
        if cut != -1:
            ready = cut
            self.done.add(row)
        else:
            ready = len(text) - self.hold
            if text.endswith("\ufffd"):
                ready = min(ready, len(text) - 1)
        if len(ids) >= self.params.max_tokens:
            self.done.add(row)
        if ready > self.sent[row]:
            prompt, sample = divmod(row, self.generated)
            indices = [prompt * self.params.n + sample * self.copies + c for c in range(self.copies)]
            self.push((indices, text[self.sent[row]:ready]))
            self.sent[row] = ready


def _row_streamer(sinks: list):
    """A transformers streamer handing each decoding step's token of row r to sinks[r] (None: not streamed)."""
    from transformers.generation.streamers import BaseStreamer

    class RowStreamer(BaseStreamer):
        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value) -> None:
            if not self.prompt_seen:  # the first call carries the prompts
                self.prompt_seen = True
                return
            for row, token in enumerate(value.tolist()):
                if sinks[row] is not None:
                    sinks[row](token)

        def end(self) -> None:
            pass

    return RowStreamer()
