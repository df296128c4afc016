"""The DPO arm's pairs (lema.trainer.preference.load_pairs): by default the rejected side is the model's first wrong step
only: its later steps are mostly correct arithmetic on wrong numbers, which a whole-continuation DPO unlearns."""

from __future__ import annotations

import json

from conftest import requires_lema_tiny


@requires_lema_tiny
def test_rejected_side_is_the_first_wrong_step_by_default(tmp_path):
    from transformers import AutoTokenizer

    from lema.core.model_resolve import resolve_model
    from lema.trainer.preference import load_pairs

    pair = {"prompt": "Question: Ann has 3 pens and buys 4. She gives 2 away. How many pens?", "context":
            "Step 1: 3 + 4 = 7.\n", "chosen": "Step 2: 7 - 2 = 5.\nThe answer is 5.",
            "rejected": "Step 2: 7 - 3 = 4.\nStep 3: 4 + 1 = 5.\nThe answer is 5.", "correction_id": "c1"}
    path = tmp_path / "preference.jsonl"
    path.write_text(json.dumps(pair) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("lema-tiny"))
    (row,) = load_pairs(tokenizer, path, 512)
    assert row["rejected"] == "Step 2: 7 - 3 = 4.\n" and row["chosen"] == pair["chosen"]
    assert row["prompt"].endswith(pair["context"])
    (whole,) = load_pairs(tokenizer, path, 512, rejected="continuation")
    assert whole["rejected"] == pair["rejected"]
