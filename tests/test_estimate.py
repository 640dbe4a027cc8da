"""addon.estimate: token counts of a stream that reported none, by two documented rules of thumb."""

from __future__ import annotations

import pytest

from addon import estimate
from addon.formats import ResponseFacts
from addon.formats.openai_chat import OpenAIChat, OpenAICompletions


@pytest.mark.parametrize("events, chars, expected", [
    (6, 29, 6),  # "Hello from the fake upstream." token by token: one per chunk
    (10, 80, 10),  # 8 characters a chunk on average: still one token each
    (3, 120, 30),  # 40 characters a chunk: batched tokens, 120 / 4
    (3, 121, 31),  # rounded up
    (0, 0, None),  # nothing generated: unknown, never 0
])
def test_output_tokens(events, chars, expected):
    assert estimate.output_tokens(events, chars) == expected


def test_chat_prompt_of_text_counts_characters_and_each_message():
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]}
    # (6 + 9 + 4 + 9) characters / 4 = 7, 3 per message, 3 for the reply
    assert estimate.chat_prompt_tokens(body) == 7 + 3 * 2 + 3


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:…"}}]}]},
    {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
    {"messages": [{"role": "assistant", "tool_calls": [{"id": "1"}]}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": []},
    {"messages": "hi"},
])
def test_chat_prompt_with_more_than_text_is_not_estimated(body):
    assert estimate.chat_prompt_tokens(body) is None


@pytest.mark.parametrize("prompt, expected", [
    ("Say this is a test", 5),
    (["abcd", "abcde"], 1 + 2),
    ([1, 2, 3], 3),  # token ids: exact
    ([[1, 2], [3]], 3),
    ([], None),
    ([1, "a"], None),
    (None, None),
])
def test_completion_prompt(prompt, expected):
    assert estimate.completion_prompt_tokens({"prompt": prompt}) == expected


def test_chat_stream_counts_generated_characters_of_every_kind():
    facts, fmt = ResponseFacts(), OpenAIChat()
    for delta in ({"role": "assistant", "content": ""}, {"content": "Hello"}, {"reasoning_content": "hmm"},
                  {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{\"a\":"}}]}, {"refusal": "no"}):
        fmt.on_event(facts, None, {"choices": [{"index": 0, "delta": delta}]})
    assert (facts.content_events, facts.output_chars) == (4, 5 + 3 + 1 + 5 + 2)


def test_completions_stream_counts_text_characters():
    facts, fmt = ResponseFacts(), OpenAICompletions()
    for text in (" that", " is", ""):
        fmt.on_event(facts, None, {"choices": [{"index": 0, "text": text}]})
    assert (facts.content_events, facts.output_chars) == (2, 8)


def test_request_fields_carry_the_prompt_estimate_of_streams_only():
    body = {"model": "m", "messages": [{"role": "user", "content": "abcd"}], "stream": True}
    assert OpenAIChat().request_fields("/v1/chat/completions", body)["prompt_tokens_estimate"] == 2 + 3 + 3
    assert "prompt_tokens_estimate" not in OpenAIChat().request_fields("/v1/chat/completions", {**body, "stream": False})
    assert OpenAICompletions().request_fields("/v1/completions", {"prompt": [1, 2], "stream": True})["prompt_tokens_estimate"] == 2
