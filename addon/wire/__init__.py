"""Framing and transfer decoding: bytes in, events out. No knowledge of any provider."""
