"""lema-tiny's tokenizer: a small byte-level BPE trained on synthetic problems.

Numbers are either one token per digit (`numbers: digits`, compositional) or one token per frequent number
(`numbers: whole`, what the committed lema-tiny uses: with numbers up to 20 in the synthetic data, copying a number
is one step and a op b = c is a one-token look-up; a side-by-side pilot was inconclusive: 8% digits vs 3% whole
at step 450, both before copying had emerged). The full 256-byte alphabet is
kept so any text round-trips, then a few hundred merges cover the synthetic vocabulary.

The space before a number is attached to the word before it ("buys 4" -> "ĠbuysĠ", "4"), not left as
a token of its own: with a standalone space token every number follows the same token, and copying "the
number after *buys*" from the question needs two tokens of context; with the space attached, one-token
induction (find the earlier "ĠbuysĠ", copy what follows) suffices.
"""

from __future__ import annotations

from collections.abc import Iterable

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Pre-tokenization pieces: a word or a run of symbols (with its leading space, and with the following space
# when a digit comes next), one digit, or whitespace. BPE merges never cross pieces, so digits stay single.
PIECES = r" ?[A-Za-z']+ (?=\d)| ?[A-Za-z']+| ?[^\sA-Za-z\d]+ (?=\d)| ?[^\sA-Za-z\d]+|\d|\s+"
# Whole-number variant: a run of digits is one piece, so BPE gives every frequent number (all of 0..20 in
# the synthetic data) one token: copying a number is one step and a op b = c is a one-token look-up.
PIECES_WHOLE = PIECES.replace(r"|\d|", r"|\d+|")

# One turn per role; the assistant turn ends with eos, which is what greedy decoding stops on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, numbers: str = "digits"):
    """Train the BPE and wrap it as a transformers fast tokenizer (left padding, for batched generation)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PIECES_WHOLE if numbers == "whole" else PIECES), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )


def save_tokenizer(tokenizer, out_dir) -> None:
    # save_jinja_files=False keeps the chat template inside tokenizer_config.json (one file to read).
    tokenizer.save_pretrained(str(out_dir), save_jinja_files=False)
