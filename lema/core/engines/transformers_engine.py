"""The transformers (+ peft) engine: no extra install, CPU or GPU, batched generation, runtime LoRA.

Adapters use peft's own `PeftModel` API (`load_adapter`, `set_adapter`, `disable_adapter`, `delete_adapter`):
transformers' `model.set_adapter` needs peft >= 0.22, which the registries do not serve. One model serves every
request, so calls are serialized by a lock and run in a worker thread to keep the event loop free.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from lema.core.engines.base import (
    AdapterInfo,
    Completion,
    ContextLengthError,
    EngineError,
    Prompt,
    SamplingParams,
)


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
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        if merge_adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, merge_adapter).merge_and_unload().eval()
        self.batch_size = batch_size
        # The longest sequence the model was built for: prompt + max_tokens beyond it is refused, not generated
        # (positions past it are out of distribution, and a huge prompt would hold the engine for minutes).
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self._adapters: dict[str, AdapterInfo] = {}
        self._lock = threading.Lock()

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
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
        rank = int(json.loads(config_file.read_text()).get("r", 0))
        info = AdapterInfo(name=name, path=str(path), rank=rank)
        self._adapters[name] = info
        return info

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

    # -- generation --------------------------------------------------------------------------------
    async def generate(
        self, prompts: list[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[list[Completion]]:
        if adapter and adapter not in self._adapters:
            raise EngineError(f"adapter {adapter!r} is not loaded (loaded: {sorted(self._adapters)})")
        texts = [self.render(p) for p in prompts]
        await asyncio.to_thread(self._check_context, texts, params.max_tokens)
        return await asyncio.to_thread(self._generate, texts, params, adapter)

    def _check_context(self, texts: list[str], max_tokens: int) -> None:
        if self.context_length is None:
            return
        for i, text in enumerate(texts):
            length = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if length + max_tokens > self.context_length:
                raise ContextLengthError(
                    f"prompt {i} has {length} tokens; with max_tokens {max_tokens} that is {length + max_tokens} > "
                    f"the model's context of {self.context_length} tokens")

    def _generate(self, texts: list[str], params: SamplingParams, adapter: str | None) -> list[list[Completion]]:
        import contextlib

        import torch

        results: list[list[Completion]] = []
        with self._lock, torch.inference_mode():
            if adapter:
                self.model.set_adapter(adapter)
                context = contextlib.nullcontext()
            elif self._adapters:
                context = self.model.disable_adapter()
            else:
                context = contextlib.nullcontext()
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with context:
                for start in range(0, len(texts), self.batch_size):
                    results += self._generate_batch(texts[start : start + self.batch_size], params)
        return results

    def _generate_batch(self, texts: list[str], params: SamplingParams) -> list[list[Completion]]:
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        # Greedy decoding gives one answer per prompt: n identical choices (OpenAI's semantics), generated once.
        generated = 1 if params.greedy else params.n  # sequences generate() returns per prompt
        copies = params.n // generated
        kwargs = dict(
            max_new_tokens=params.max_tokens,
            num_return_sequences=generated,
            pad_token_id=self.tokenizer.pad_token_id,
            do_sample=not params.greedy,
        )
        if not params.greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        output = self.model.generate(**batch, **kwargs)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        eos_ids = self._eos_ids()
        completions: list[list[Completion]] = []
        for i, row in enumerate(new_tokens.tolist()):
            ids, finish = [], "length"
            for token in row:
                if token in eos_ids:
                    finish = "stop"
                    break
                ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for stop in params.stop:  # OpenAI semantics: the stop string is not part of the output
                cut = text.find(stop)
                if cut != -1:
                    text, finish = text[:cut], "stop"
            if i % generated == 0:
                completions.append([])
            completion = Completion(text=text, token_ids=tuple(ids), finish_reason=finish,
                                    prompt_tokens=int(prompt_lengths[i // generated]),
                                    completion_tokens=len(ids))
            completions[-1].extend([completion] * copies)
        return completions

    def _eos_ids(self) -> set[int]:
        ids = set()
        config_eos = self.model.generation_config.eos_token_id
        if isinstance(config_eos, int):
            ids.add(config_eos)
        elif config_eos:
            ids.update(config_eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if self.tokenizer.pad_token_id is not None and self.tokenizer.pad_token_id != self.tokenizer.eos_token_id:
            ids.add(self.tokenizer.pad_token_id)  # generate() pads finished rows with pad_token_id
        return ids

    async def close(self) -> None:
        self._adapters.clear()
