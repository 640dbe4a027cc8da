"""Framing and transfer decoding: bytes in, events out. No knowledge of any provider."""

# The most bytes of one event each framer keeps to be parsed: an SSE event's data (or any one of
# its lines), an NDJSON line, an element of a streamed JSON array, an event-stream frame. The
# largest real ones are a few MB (a Responses stream's `response.completed` repeating a long
# output, a partial image); parsing one costs up to about 20 times its size (`json.loads` of
# small objects). A longer one is skipped unread and counted in its framer's `oversized`; the
# events after it are read as usual.
MAX_EVENT_BYTES = 8 << 20
