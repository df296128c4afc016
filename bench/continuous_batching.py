"""lema's scheduler against transformers' own continuous batching, in one process, on one workload (issue 26).

The same prompts, greedy, on lema-tiny with 1 torch thread, alternating rounds:
- `generate`: plain `model.generate()` on the whole batch (static batching, the reference);
- `transformers-cb`: `model.generate_batch()` (transformers' `ContinuousBatchingManager`, paged KV cache), its cache
  sized for the workload (num_blocks, page size 32, max_batch_tokens 512; unsized, it spent ~50 s on this workload);
- `lema`: `TransformersEngine.generate()` (lema.core.engines.continuous).

    python bench/continuous_batching.py [--prompts 16] [--max-tokens 64] [--rounds 3]

Prints tokens/s per contender (median of rounds) and whether each one's outputs equal plain generate's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]  # bench/trainer.py is not `trainer`

from lema.core.model_resolve import resolve_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from lema.core.engines import SamplingParams
    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.core.synthetic import generate

    torch.set_num_threads(1)
    path = resolve_model("lema-tiny")
    texts = [f"Question: {p.question}\nAnswer:" for p in generate(args.prompts, seed=11, split="test", steps=(2, 3))]
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    engine = TransformersEngine(path, threads=1, batch_size=max(32, args.prompts))

    def trim(row: list[int]) -> list[int]:
        return row[:row.index(eos)] if eos in row else row

    def plain() -> list[list[int]]:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=args.max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return [trim(r) for r in out[:, enc["input_ids"].shape[1]:].tolist()]

    def transformers_cb() -> list[list[int]]:
        blocks = max(16, 2 * args.prompts * ((max(map(len, ids)) + args.max_tokens) // 32 + 1))
        config = ContinuousBatchingConfig(use_cuda_graph=False, num_blocks=blocks, page_size=32, max_batch_tokens=512,
                                          use_async_batching=False)
        gen = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=eos,
                               pad_token_id=tokenizer.pad_token_id)
        out = model.generate_batch(ids, generation_config=gen, continuous_batching_config=config,
                                   max_new_tokens=args.max_tokens, warmup=False)
        return [trim(list(o.generated_tokens)) for o in out.values()]

    def lema() -> list[list[int]]:
        results = asyncio.run(engine.generate(texts, SamplingParams(max_tokens=args.max_tokens)))
        return [list(r[0].token_ids) for r in results]

    contenders = {"generate": plain, "transformers-cb": transformers_cb, "lema": lema}
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            started = time.perf_counter()
            outputs[name] = run()
            rates[name].append(sum(map(len, outputs[name])) / (time.perf_counter() - started))
    reference = outputs["generate"]
    for name in contenders:
        same = sum(a == b for a, b in zip(outputs[name], reference))
        median = statistics.median(rates[name])
        print(f"{name:16s} {median:8.1f} tokens/s ({median / statistics.median(rates['generate']):.2f}x generate), "
              f"outputs equal to generate's: {same}/{len(reference)}")


if __name__ == "__main__":
    main()
