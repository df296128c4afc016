"""The OpenAI-compatible engine: any server speaking /v1/completions and /v1/chat/completions (a hosted
GPT-4-class model, a vLLM server, lema's own endpoint) through the official `openai` client.

Adapters are models on the server side (vLLM and lema's endpoint list each LoRA adapter as a model); loading
one here only checks that the server lists it. The API key comes from an environment variable and is never
logged or echoed.
"""

from __future__ import annotations

import asyncio
import os

from lema.core.engines.base import AdapterInfo, Completion, EngineError, Prompt, SamplingParams


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 2,
        concurrency: int = 8,
    ):
        from openai import AsyncOpenAI

        self.model_id = model
        self.client = AsyncOpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "EMPTY",
            timeout=timeout_s,
            max_retries=max_retries,
        )
        self._adapters: dict[str, AdapterInfo] = {}
        self._semaphore = asyncio.Semaphore(concurrency)  # bounded concurrency toward the upstream

    async def load_adapter(self, name: str, path: str) -> AdapterInfo:
        served = {m.id async for m in self.client.models.list()}
        if name not in served:
            raise EngineError(f"the server does not serve a model named {name!r}")
        info = AdapterInfo(name=name, path=path)
        self._adapters[name] = info
        return info

    async def unload_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters.values())

    async def generate(
        self, prompts: list[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[list[Completion]]:
        return list(await asyncio.gather(*[self._one(p, params, adapter) for p in prompts]))

    async def _one(self, prompt: Prompt, params: SamplingParams, adapter: str | None) -> list[Completion]:
        common = dict(
            model=adapter or self.model_id,
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
        )
        if params.ignore_eos:  # vLLM's extension: an upstream that does not know it refuses the request
            common["extra_body"] = {"ignore_eos": True}
        if params.logprobs is not None or params.prompt_logprobs is not None:
            raise EngineError("logprobs: not supported by the openai engine")
        async with self._semaphore:
            if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):  # text or token ids
                response = await self.client.completions.create(prompt=prompt, **common)
                texts = [(c.text, c.finish_reason) for c in response.choices]
            else:
                response = await self.client.chat.completions.create(messages=prompt, **common)
                texts = [(c.message.content or "", c.finish_reason) for c in response.choices]
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        per_sample = (usage.completion_tokens // max(1, len(texts))) if usage else 0
        return [
            Completion(text=t, finish_reason=f or "stop", prompt_tokens=prompt_tokens, completion_tokens=per_sample)
            for t, f in texts
        ]

    async def close(self) -> None:
        await self.client.close()
