"""The endpoint's OpenAI request types against the spec as the `openai` package types it (issue 27): every field of
the spec is honoured, accepted as identification, or refused with a message naming it; nothing is dropped."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
from openai.types import completion_create_params  # noqa: E402
from openai.types.chat import completion_create_params as chat_create_params  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from lema.services.endpoint.openai_api import _validation_message  # noqa: E402
from lema.services.endpoint.protocol import IDENTIFICATION, ChatRequest, CompletionRequest  # noqa: E402

MESSAGES = [{"role": "user", "content": "2+3?"}]
# A value that would change the output, per refused field (the spec's types, in the shape a client sends them).
SETTINGS = {
    "frequency_penalty": 0.5, "presence_penalty": 0.5, "logit_bias": {"50256": -100}, "suffix": "end",
    "best_of": 3, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
    "parallel_tool_calls": True, "functions": [{"name": "f"}], "function_call": "auto",
    "response_format": {"type": "json_object"}, "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"], "prediction": {"type": "content", "content": "x"}, "reasoning_effort": "low",
    "verbosity": "low", "web_search_options": {}, "store": True, "moderation": {"model": "x"},
}
SPECS = [(CompletionRequest, completion_create_params.CompletionCreateParamsBase, {"prompt": "2+3?"}),
         (ChatRequest, chat_create_params.CompletionCreateParamsBase, {"messages": MESSAGES})]


def _message(cls, body: dict) -> str:
    with pytest.raises(ValidationError) as err:
        cls.model_validate(body)
    return _validation_message(err.value)


@pytest.mark.parametrize("cls, spec, required", SPECS, ids=["completions", "chat"])
def test_every_field_of_the_spec_is_honoured_accepted_or_refused(cls, spec, required):
    fields = set(spec.__annotations__)
    honoured = set(cls.model_fields) - set(IDENTIFICATION)
    refused = set(cls.refused_fields)
    unclassified = fields - honoured - refused - set(IDENTIFICATION)
    assert not unclassified, f"spec fields neither honoured, accepted nor refused: {sorted(unclassified)}"
    for field in sorted(refused & fields):
        if field in SETTINGS:
            message = _message(cls, {"model": "m", **required, field: SETTINGS[field]})
            assert message.startswith(f"{field}: ") and ("not supported" in message or "only" in message), message


def test_refused_fields_set_to_their_neutral_value_are_accepted():
    ChatRequest.model_validate({"model": "m", "messages": MESSAGES, "tools": [], "tool_choice": "none",
                                "response_format": {"type": "text"}, "frequency_penalty": 0, "store": False,
                                "modalities": ["text"], "user": "u-1", "metadata": {"team": "math"}})
    CompletionRequest.model_validate({"model": "m", "prompt": "x", "best_of": 1, "suffix": None, "logit_bias": {}})


def test_fields_outside_the_spec_are_refused_by_name():
    message = _message(CompletionRequest, {"model": "m", "prompt": "x", "top_k": 5})
    assert message.startswith("top_k: ") and "not a parameter" in message
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "ignore_eos": True}).sampling().ignore_eos


def test_max_completion_tokens_content_parts_and_the_developer_role():
    body = ChatRequest.model_validate({"model": "m", "max_completion_tokens": 5, "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "2+3?"}, {"type": "text", "text": "Show steps."}]}]})
    assert body.sampling().max_tokens == 5
    assert [m.as_message() for m in body.messages] == [{"role": "system", "content": "be brief"},
                                                       {"role": "user", "content": "2+3?\nShow steps."}]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    message = _message(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": [image]}]})
    assert message.startswith("messages.0: content[0].type: 'image_url'"), message
    assert "differs" in _message(ChatRequest, {"model": "m", "messages": MESSAGES, "max_tokens": 4,
                                               "max_completion_tokens": 5})
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x",
                                             "max_completion_tokens": 7}).sampling().max_tokens == 7


def test_token_id_prompts_logprobs_and_echo():
    single = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3], "logprobs": 2, "echo": True})
    assert single.prompts() == [[1, 2, 3]]
    params = single.sampling()
    assert params.logprobs == 2 and params.prompt_logprobs == 2
    batched = CompletionRequest.model_validate({"model": "m", "prompt": [[1, 2], [3]]})
    assert batched.prompts() == [[1, 2], [3]] and batched.sampling().logprobs is None
    assert _message(CompletionRequest, {"model": "m", "prompt": [1, -2]}).startswith("prompt")
    chat = ChatRequest.model_validate({"model": "m", "messages": MESSAGES, "logprobs": True, "top_logprobs": 3})
    assert chat.sampling().logprobs == 3
    assert "needs logprobs" in _message(ChatRequest, {"model": "m", "messages": MESSAGES, "top_logprobs": 3})
    assert _message(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 21}).startswith("logprobs")
