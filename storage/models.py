"""The live schema as peewee models. Migrations never import this module: they carry frozen
copies of what each step creates, so an old step keeps meaning what it meant when it shipped."""

from __future__ import annotations

import peewee


class CompletionRequest(peewee.Model):
    """One LLM API call. Names carry units; a value the call did not report is NULL, never 0."""

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
    cached_tokens = peewee.IntegerField(null=True)
    reasoning_tokens = peewee.IntegerField(null=True)
    finish_reason = peewee.TextField(null=True)
    time_to_first_byte_ms = peewee.IntegerField(null=True)
    time_to_first_token_ms = peewee.IntegerField(null=True)  # NULL for non-streamed calls
    time_to_last_token_ms = peewee.IntegerField(null=True)
    tokens_per_second = peewee.FloatField(null=True)
    chunk_count = peewee.IntegerField(null=True)
    error_type = peewee.TextField(null=True)
    error_message = peewee.TextField(null=True)

    class Meta:
        table_name = "completion_requests"


MODELS = (CompletionRequest,)
