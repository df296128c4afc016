"""lema.core.engines.stopping: the one rule for where a completion ends, shared by the local engines."""

from __future__ import annotations

from types import SimpleNamespace

from lema.core.engines.stopping import cut_at_stop, end_token_ids, first_stop


def test_the_earliest_stop_string_wins_whatever_the_order_given():
    text = "step 1\nstep 2\n\nThe answer is 4"
    assert first_stop(text, ["The answer", "\n\n"]) == text.index("\n\n")
    assert cut_at_stop(text, ["The answer", "\n\n"], "length") == ("step 1\nstep 2", "stop")
    assert cut_at_stop(text, ["\n\n", "The answer"], "length") == ("step 1\nstep 2", "stop")


def test_a_text_without_stop_strings_keeps_its_finish_reason():
    assert first_stop("no stop here", ["###"]) == -1
    assert cut_at_stop("no stop here", ["###"], "length") == ("no stop here", "length")
    assert cut_at_stop("no stop here", [], "stop") == ("no stop here", "stop")


def test_a_stop_string_at_the_start_leaves_an_empty_text():
    assert cut_at_stop("###rest", ["###"], "length") == ("", "stop")


def test_end_tokens_join_the_config_the_eos_and_the_pad():
    tokenizer = SimpleNamespace(eos_token_id=2, pad_token_id=0)
    assert end_token_ids(7, tokenizer) == {7, 2, 0}
    assert end_token_ids([7, 8], tokenizer) == {7, 8, 2, 0}
    assert end_token_ids(None, tokenizer) == {2, 0}
    assert end_token_ids(None, SimpleNamespace(eos_token_id=2, pad_token_id=None)) == {2}
