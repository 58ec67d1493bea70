"""Message ids: unique and sortable by creation time (ULID layout).

48 bits of milliseconds since the epoch followed by 80 random bits, written in
Crockford base32 (26 characters), so ids sort lexically in creation order and a
database index on them is append-mostly.
"""

import hashlib
import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> two characters

# Random bytes are read from the OS a few kilobytes at a time: one getrandom() call per
# id cost more than the rest of a send. Each thread has its own buffer, and a forked
# child (gunicorn workers) starts with none, so no two processes share random bytes.
_RANDOM_CHUNK = 10 * 512
_local = threading.local()
_generation = 0


def _after_fork() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_after_fork)


def _random80() -> int:
    buffer = getattr(_local, "buffer", b"")
    offset = getattr(_local, "offset", 0)
    if offset >= len(buffer) or getattr(_local, "generation", None) != _generation:
        buffer, offset = os.urandom(_RANDOM_CHUNK), 0
        _local.buffer, _local.generation = buffer, _generation
    _local.offset = offset + 10
    return int.from_bytes(buffer[offset : offset + 10], "big")


def _encode(value: int) -> str:
    pairs = []
    for _ in range(13):
        pairs.append(_PAIRS[value & 1023])
        value >>= 10
    return "".join(reversed(pairs))


def new_id(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return _encode((ms << 80) | _random80())


def id_timestamp_ms(message_id: str) -> int:
    value = 0
    for char in message_id[:10]:
        value = (value << 5) | _ALPHABET.index(char)
    return value


def stable_id(now_ms: int, key: str) -> str:
    """The same id for the same (moment, key): a schedule's tick, whichever replica fires it.

    The ULID layout is kept (sortable by `now_ms`); the 80 random bits become a hash of the key.
    """
    digest = int.from_bytes(hashlib.sha256(f"{now_ms}:{key}".encode()).digest()[:10], "big")
    return _encode((now_ms << 80) | digest)
