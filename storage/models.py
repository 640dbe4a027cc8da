"""The live schema as peewee models. Migrations never import this module: they carry frozen
copies of what each step creates, so an old step keeps meaning what it meant when it shipped."""

from __future__ import annotations

import peewee


class CompletionRequest(peewee.Model):
    """One LLM API call. Names carry units; a value the call did not report is NULL, never 0.
    Text columns have a longest length each (`addon.bounds.TEXT_LIMITS`)."""

    id = peewee.AutoField()  # what peewee adds by itself when no field is the key; named so type checkers see it
    timestamp = peewee.TextField()  # request start, UTC, 2026-11-22T14:03:07.123456Z
    success = peewee.BooleanField()
    status_code = peewee.IntegerField(null=True)  # NULL when no response came
    response_time_ms = peewee.IntegerField()
    model = peewee.TextField(null=True)  # as the response names it, else as requested
    request_model = peewee.TextField(null=True)
    provider = peewee.TextField(null=True)
    host = peewee.TextField(null=True)
    path = peewee.TextField(null=True)
    origin = peewee.TextField(null=True)
    is_streaming = peewee.BooleanField()
    max_tokens = peewee.IntegerField(null=True)
    temperature = peewee.FloatField(null=True)
    top_p = peewee.FloatField(null=True)
    message_count = peewee.IntegerField(null=True)
    prompt_tokens = peewee.IntegerField(null=True)  # all input, cached included
    completion_tokens = peewee.IntegerField(null=True)  # all output, reasoning included
    total_tokens = peewee.IntegerField(null=True)
    cached_tokens = peewee.IntegerField(null=True)  # cache reads, part of prompt_tokens
    cache_creation_tokens = peewee.IntegerField(null=True)  # cache writes, part of prompt_tokens
    reasoning_tokens = peewee.IntegerField(null=True)
    finish_reason = peewee.TextField(null=True)  # the provider's own value
    finish_category = peewee.TextField(null=True)  # stop, length, tool_calls, content_filter, error, other
    operation = peewee.TextField(null=True)  # chat, text_completion, responses, embeddings, messages, generate_content
    usage_source = peewee.TextField(null=True)  # reported, estimated (addon/estimate.py), missing, implausible (a count left out)
    cost_usd = peewee.DoubleField(null=True)  # NULL: usage missing, or provider/model not in the price data
    price_source = peewee.TextField(null=True)  # where cost_usd's price came from: genai-prices, custom; NULL: no cost
    prompt_eval_duration_ms = peewee.DoubleField(null=True)  # the server's own timings (Ollama)
    eval_duration_ms = peewee.DoubleField(null=True)
    time_to_first_byte_ms = peewee.IntegerField(null=True)
    time_to_first_token_ms = peewee.IntegerField(null=True)  # NULL for non-streamed calls
    time_to_last_token_ms = peewee.IntegerField(null=True)
    tokens_per_second = peewee.FloatField(null=True)
    chunk_count = peewee.IntegerField(null=True)
    error_type = peewee.TextField(null=True)
    error_message = peewee.TextField(null=True)
    metering_note = peewee.TextField(null=True)  # what of the call was not read or stored, and why
    # who made it (addon/agents.py), as the client said: NULL when it did not say
    agent = peewee.TextField(null=True)  # normalised: claude-code, codex, gemini-cli, openai-python, curl, ...
    agent_version = peewee.TextField(null=True)
    session_id = peewee.TextField(null=True)  # the agent's own session id
    subagent_id = peewee.TextField(null=True)
    parent_id = peewee.TextField(null=True)
    request_kind = peewee.TextField(null=True)  # as the agent says (Codex: prewarm, turn, ...)
    retry_count = peewee.IntegerField(null=True)  # the SDK's retry counter: 0 for a first attempt
    auth_mode = peewee.TextField(null=True)  # api_key, oauth or none: never the credential
    # what the response said is left (addon/quota.py): NULL when it said nothing
    rate_remaining_requests = peewee.BigIntegerField(null=True)
    rate_remaining_tokens = peewee.BigIntegerField(null=True)
    rate_reset_at = peewee.TextField(null=True)  # UTC
    quota_used_percent = peewee.DoubleField(null=True)  # the short window (Claude's 5 h, Codex's primary)
    quota_window_minutes = peewee.IntegerField(null=True)
    quota_reset_at = peewee.TextField(null=True)
    quota_long_used_percent = peewee.DoubleField(null=True)  # the long window (7 days, Codex's secondary)
    quota_long_window_minutes = peewee.IntegerField(null=True)
    quota_long_reset_at = peewee.TextField(null=True)
    retry_after_s = peewee.DoubleField(null=True)

    class Meta:
        table_name = "completion_requests"


class DroppedRows(peewee.Model):
    """Rows the proxy could not store: how many, why, and when, counted per reason."""

    first_dropped_at = peewee.TextField()  # UTC, same form as CompletionRequest.timestamp
    last_dropped_at = peewee.TextField()
    row_count = peewee.IntegerField()
    reason = peewee.TextField()  # queue_full, unwritten_at_shutdown, bad_row, write_error, writer_stopped, metering_lost (storage.writer)
    hostname = peewee.TextField(null=True)  # the proxy process that dropped them
    pid = peewee.IntegerField(null=True)

    class Meta:
        table_name = "dropped_rows"


class DailyTotals(peewee.Model):
    """What a prune keeps of the rows it deletes: per UTC day, model, provider and agent. Sums are
    NULL when no call of the group reported them; latency and TTFT as sum and count (a mean)."""

    day = peewee.TextField()  # 2026-11-22
    model = peewee.TextField(null=True)
    provider = peewee.TextField(null=True)
    agent = peewee.TextField(null=True)
    requests = peewee.IntegerField()
    errors = peewee.IntegerField()
    streamed = peewee.IntegerField()
    prompt_tokens = peewee.BigIntegerField(null=True)
    completion_tokens = peewee.BigIntegerField(null=True)
    cached_tokens = peewee.BigIntegerField(null=True)
    reasoning_tokens = peewee.BigIntegerField(null=True)
    cost_usd = peewee.DoubleField(null=True)
    unpriced_calls = peewee.IntegerField()
    response_time_ms_sum = peewee.BigIntegerField(null=True)
    response_time_count = peewee.IntegerField()
    ttft_ms_sum = peewee.BigIntegerField(null=True)
    ttft_count = peewee.IntegerField()

    class Meta:
        table_name = "daily_totals"


MODELS = (CompletionRequest, DroppedRows, DailyTotals)
