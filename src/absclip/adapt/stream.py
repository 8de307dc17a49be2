"""The order of a test-time stream: a seeded permutation of the dataset, recorded with the results."""

from __future__ import annotations

import hashlib
import random
from typing import Any


def stream_order(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` drawn from ``seed`` (Python's Mersenne Twister seeded with a string,
    so it is the same on every platform and Python 3 version). It is drawn over the whole split, so an
    unreadable image only drops out of the stream and leaves the others' order unchanged."""
    order = list(range(n))
    random.Random(f"absclip-stream:{seed}").shuffle(order)
    return order


def stream_record(order: list[int], seed: int, head: int = 10) -> dict[str, Any]:
    """What a record states about a stream: its seed, length, a digest of the order and its first indices."""
    digest = hashlib.sha256(",".join(map(str, order)).encode()).hexdigest()[:16]
    return {"seed": seed, "length": len(order), "order_sha256": digest, "first": order[:head]}
