"""The transformers (+ peft) engine: no extra install, CPU or GPU, continuous batching, streaming, runtime LoRA.

Adapters use peft's own `PeftModel` API (`load_adapter`, `set_adapter`, `disable_adapter`, `delete_adapter`):
transformers' `model.set_adapter` needs peft >= 0.22, which the registries do not serve. One model serves every
request: a worker thread runs iteration-level scheduling (lema.core.engines.continuous): a request joins the running
batch at the next decoding step, rows leave as they finish, requests for different adapters share steps, so the event
loop stays free and a short request never waits for a long one to end.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from lema.core.engines.base import (
    AdapterInfo,
    Completion,
    ContextLengthError,
    EngineError,
    InvalidPrompt,
    Prompt,
    SamplingParams,
    StreamDelta,
)
from lema.core.engines.continuous import Request, Scheduler
from lema.core.engines.stopping import end_token_ids

logger = logging.getLogger("lema.engine")


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
        max_waiting: int | None = None,
        max_sequences_per_request: int | None = None,
    ):
        """`batch_size`: the most rows (sequences) generating at once. `merge_adapter`: a PEFT adapter folder merged
        into the weights at load time, for a model that serves one adapter only (evaluation): an unmerged LoRA adds
        about 40% to generation time. `max_waiting` (sequences queued; past it requests are refused as busy) and
        `max_sequences_per_request` (prompts x n) bound a server's queue; None: unbounded (offline use)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads or self.device == "cpu":
            # One thread by default on CPU: lema runs several processes side by side, and measured here a
            # 2-thread generate slowed from ~700 to 6-22 tokens/s whenever another process kept a core busy
            # (OpenMP threads waiting on each other). Pass threads=N for a machine of your own.
            torch.set_num_threads(threads or 1)
        # float32 on CPU: this CPU has no native bf16 and bf16 matmuls were ~26x slower (docs/development.md, 'The CPU stack').
        torch_dtype = torch.float32 if (dtype == "auto" and self.device == "cpu") else (
            "auto" if dtype == "auto" else getattr(torch, dtype)
        )
        tokenizer = AutoTokenizer.from_pretrained(model)
        loaded = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        if merge_adapter:
            from peft import PeftModel

            loaded = PeftModel.from_pretrained(loaded, merge_adapter).merge_and_unload().eval()
        self._attach(loaded, tokenizer, batch_size, max_waiting, max_sequences_per_request)

    @classmethod
    def from_loaded(cls, model, tokenizer, model_id: str = "in-memory", batch_size: int = 32) -> TransformersEngine:
        """An engine over a model already in memory (lema-tiny's pretraining evaluates its live weights): nothing
        is loaded, moved or converted, and torch's thread count stays the caller's. The model is put in eval mode
        and the tokenizer pads on the left; a caller that goes on training sets `model.train()` again."""
        engine = cls.__new__(cls)
        engine.model_id = model_id
        engine.device = str(next(model.parameters()).device)
        engine._attach(model.eval(), tokenizer, batch_size, None, None)
        return engine

    def _attach(self, model, tokenizer, batch_size: int, max_waiting: int | None,
                max_sequences_per_request: int | None) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # batched scoring and prefill continue every prompt from its last token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model
        self.batch_size = batch_size
        # The longest sequence the model was built for: prompt + max_tokens beyond it is refused, not generated
        # (positions past it are out of distribution, and a huge prompt would hold the engine for minutes).
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self._adapters: dict[str, AdapterInfo] = {}
        self._lock = threading.Lock()  # the model: one decoding step, an adapter load or unload, a scoring pass
        # A fast tokenizer changes its padding and truncation state on every call and is not safe to call from two
        # threads at once (prompts are encoded beside a generating batch).
        self._tokenizer_lock = threading.Lock()
        self.scheduler = Scheduler(
            model=lambda: self.model, tokenizer=self.tokenizer, device=self.device, end_ids=self._eos_ids(),
            lock=self._lock, tokenizer_lock=self._tokenizer_lock, loaded_adapters=lambda: set(self._adapters),
            max_rows=batch_size, max_waiting=max_waiting, max_sequences_per_request=max_sequences_per_request,
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters for tests and benchmarks: requests, steps, prefills, preemptions, tokens, the widest batch."""
        return self.scheduler.stats

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
        """n completions per prompt. The request joins the running batch at the next decoding step and its rows
        leave it as they finish (lema.core.engines.continuous); a caller that is cancelled (a client gone, a
        deadline passed) has its rows dropped at the next step."""
        prompt_ids = await self._prepare(prompts, params, adapter)
        if not prompt_ids:
            return []
        loop = asyncio.get_running_loop()
        request = Request(prompt_ids, params, adapter, loop, loop.create_future())
        self.scheduler.submit(request)
        try:
            return await request.future
        except asyncio.CancelledError:
            self.scheduler.cancel(request)
            raise

    async def generate_stream(
        self, prompts: list[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[StreamDelta]:
        """`generate`, delivered as the tokens come: text deltas per choice, then each choice's last delta with its
        finish reason and completion. Closing the iterator early (a client gone) cancels the request. Concatenated
        deltas equal the completion's text: text that might still turn out to be part of a stop string, or half of
        a multi-byte character, is held back until it cannot."""
        prompt_ids = await self._prepare(prompts, params, adapter)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        request = Request(prompt_ids, params, adapter, loop, loop.create_future(),
                          on_text=events.put_nowait)
        request.future.add_done_callback(lambda _: events.put_nowait(None))
        self.scheduler.submit(request)
        sent: dict[int, str] = collections.defaultdict(str)
        try:
            while (items := await events.get()) is not None:
                for index, text, prompt_tokens, completion_tokens in items:
                    sent[index] += text
                    yield StreamDelta(index, text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            results = request.future.result()  # raises the generation's error, if any
            for prompt_index, samples in enumerate(results):
                for sample, completion in enumerate(samples):
                    index = prompt_index * params.n + sample
                    rest = completion.text[len(sent[index]):] if completion.text.startswith(sent[index]) else ""
                    yield StreamDelta(index, rest, completion.finish_reason, completion, completion.prompt_tokens,
                                      completion.completion_tokens)
        finally:
            if not request.future.done():  # the consumer stopped early (a client gone): drop the rows
                self.scheduler.cancel(request)
                request.future.cancel()

    async def _prepare(self, prompts: list[Prompt], params: SamplingParams, adapter: str | None) -> list[list[int]]:
        """The prompts as token ids, checked against the adapters loaded and the model's context."""
        if adapter and adapter not in self._adapters:
            raise EngineError(f"adapter {adapter!r} is not loaded (loaded: {sorted(self._adapters)})")
        rendered = [p if _is_token_ids(p) else self.render(p) for p in prompts]
        return await asyncio.to_thread(self._encode, rendered, params.max_tokens) if rendered else []

    def _encode(self, prompts: list[str | list[int]], max_tokens: int) -> list[list[int]]:
        encoded = []
        vocabulary = len(self.tokenizer)
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                with self._tokenizer_lock:
                    ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            else:
                ids = list(prompt)
                if any(not 0 <= t < vocabulary for t in ids):
                    raise InvalidPrompt(f"prompt {i}: token ids must be between 0 and {vocabulary - 1}")
            if not ids:
                raise EngineError(f"prompt {i} is empty once rendered")
            if self.context_length is not None and len(ids) + max_tokens > self.context_length:
                raise ContextLengthError(
                    f"prompt {i} has {len(ids)} tokens; with max_tokens {max_tokens} that is {len(ids) + max_tokens} "
                    f"> the model's context of {self.context_length} tokens")
            encoded.append(ids)
        return encoded

    @property
    def busy_for_s(self) -> float:
        """How long the engine has made no progress while it had work (0 when idle): readiness reads it."""
        return self.scheduler.stalled_for_s

    def _adapter_context(self, adapter: str | None):
        """With the lock held: the adapter made active, or, for the base model while adapters are loaded, a context
        that disables them."""
        import contextlib

        if adapter:
            self.model.set_adapter(adapter)
            return contextlib.nullcontext()
        return self.model.disable_adapter() if self._adapters else contextlib.nullcontext()

    def _eos_ids(self) -> set[int]:
        return end_token_ids(self.model.generation_config.eos_token_id, self.tokenizer)

    async def close(self, grace_s: float = 0.0) -> None:
        """Refuse new requests; let the ones in flight finish for up to `grace_s` (SIGTERM's drain), then cancel
        the rest and end the worker."""
        cancelled = await asyncio.to_thread(self.scheduler.drain, grace_s)
        if cancelled:
            logger.warning("closed with %d request(s) unfinished after a %.0f s grace period", cancelled, grace_s)
        self._adapters.clear()


def _is_token_ids(prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) for t in prompt)
