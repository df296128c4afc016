"""The transformers engine's teacher-forced scoring (`completion_logprobs`), on lema-tiny's real weights: the same
numbers as a plain forward pass of one row, whatever the batch around it."""

from __future__ import annotations

import asyncio

import pytest
from conftest import requires_lema_tiny

from lema.core.formats import cot_prompt
from lema.core.synthetic import generate


@requires_lema_tiny
def test_batched_scores_equal_one_row_at_a_time_and_a_plain_forward():
    import torch

    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.core.model_resolve import resolve_model
    from lema.core.rendering import encode_row

    problems = generate(5, seed=9, split="validation")
    rows = [(cot_prompt(p.question), p.gold_solution) for p in problems]
    engine = TransformersEngine(resolve_model("lema-tiny"), batch_size=4, threads=1)
    try:
        batched = asyncio.run(engine.completion_logprobs(rows))
        alone = [asyncio.run(engine.completion_logprobs([row]))[0] for row in rows]
        encoded = encode_row(engine.tokenizer, *rows[0])
        ids = torch.tensor([encoded.input_ids])
        with torch.inference_mode():
            logprobs = torch.log_softmax(engine.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        # scored through the end token, not the template's newline after it (generation never reaches it)
        eos = engine.tokenizer.eos_token_id
        last_end = max(i for i, (t, m) in enumerate(zip(encoded.input_ids, encoded.completion_mask)) if m and t == eos)
        assert any(encoded.completion_mask[last_end + 1:])  # lema-tiny's template trains a token after it
        mask = [m if i + 1 <= last_end else 0 for i, m in enumerate(encoded.completion_mask[1:])]
        plain = sum(float(logprobs[i, encoded.input_ids[i + 1]]) for i in range(len(mask)) if mask[i])
        # a wrong solution is less likely than the reference
        wrong = asyncio.run(engine.completion_logprobs([(rows[0][0], rows[0][1].replace(problems[0].answer,
                                                                                           "999"))]))[0]
    finally:
        asyncio.run(engine.close())
    for (b_lp, b_n), (a_lp, a_n) in zip(batched, alone):
        assert b_n == a_n > 10 and b_lp == pytest.approx(a_lp, abs=1e-3) and b_lp < 0
    assert batched[0][0] == pytest.approx(plain, abs=1e-3) and batched[0][1] == sum(mask)
    assert wrong[0] < batched[0][0]
