"""A body cut into pieces the way a network may deliver it, for feeding incremental decoders."""

from __future__ import annotations

import random


def random_pieces(data: bytes, seed: int, max_size: int | None = None) -> list[bytes]:
    """Random sizes down to 1 byte, up to `max_size`; without one, the maximum varies per piece
    (1, 8 or 256 bytes) so runs of tiny pieces occur. The same seed gives the same cuts."""
    rng = random.Random(seed)
    pieces, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, max_size or rng.choice((1, 8, 256)))
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


def one_byte_pieces(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]
