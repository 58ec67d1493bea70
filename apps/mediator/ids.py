"""Message ids: unique and sortable by creation time (ULID layout).

48 bits of milliseconds since the epoch followed by 80 random bits, written in
Crockford base32 (26 characters), so ids sort lexically in creation order and a
database index on them is append-mostly.
"""

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def id_timestamp_ms(message_id: str) -> int:
    value = 0
    for char in message_id[:10]:
        value = (value << 5) | _ALPHABET.index(char)
    return value
