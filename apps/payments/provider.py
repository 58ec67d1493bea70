"""A deterministic fake payment provider, driven by test tokens like Stripe's.

tok_visa      succeeds
tok_declined  is declined (permanent: retrying cannot help)
tok_flaky     fails transiently on the first two attempts, then succeeds
anything else is declined as an unknown card

With FAKE_PROVIDER_OUTAGE=1 in the environment every charge fails transiently, as
when the real provider is down; FAKE_PROVIDER_DELAY=<seconds> makes every charge that
slow (used to exercise retries, dead letters, replay, heartbeats and timeouts).

Like Stripe, a charge carries an idempotency key: the same key charges once and
answers the first result again. With FAKE_PROVIDER_LEDGER=<file> every call is
appended to that file (shared by processes, as a real provider's books are), so tests
can count calls and charges; without it the key is accepted and nothing is remembered.
"""

import fcntl
import hashlib
import json
import os
import time
from decimal import Decimal


class Declined(Exception):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class ProviderUnavailable(Exception):
    """The provider timed out or answered 5xx: try again later."""


FLAKY_FAILURES = 2


def charge(*, token: str, amount: Decimal, order_id: str, attempt: int, idempotency_key: str) -> str:
    """Capture `amount` once per `idempotency_key`; returns the provider's charge reference."""
    ledger = os.environ.get("FAKE_PROVIDER_LEDGER")
    if not ledger:
        return _capture(token, amount, order_id, attempt)
    with open(ledger, "a+") as books:
        fcntl.flock(books, fcntl.LOCK_EX)  # one call at a time across processes, as at a real provider
        books.seek(0)
        earlier = [json.loads(line) for line in books if line.strip()]
        known = next((e["reference"] for e in earlier if e["key"] == idempotency_key and e["reference"]), None)
        entry = {"key": idempotency_key, "order_id": order_id, "charged": known is None, "reference": known}
        try:
            if known is None:
                entry["reference"] = _capture(token, amount, order_id, attempt)
        except (Declined, ProviderUnavailable):
            entry["charged"] = False
            raise
        finally:
            books.write(json.dumps(entry) + "\n")
        return entry["reference"]


def _capture(token: str, amount: Decimal, order_id: str, attempt: int) -> str:
    delay = float(os.environ.get("FAKE_PROVIDER_DELAY", "0"))
    if delay:
        time.sleep(delay)
    if os.environ.get("FAKE_PROVIDER_OUTAGE") == "1":
        raise ProviderUnavailable("provider outage")
    if token == "tok_declined":
        raise Declined("card_declined")
    if token == "tok_flaky" and attempt <= FLAKY_FAILURES:
        raise ProviderUnavailable(f"provider timeout (attempt {attempt})")
    if token not in ("tok_visa", "tok_flaky"):
        raise Declined("unknown_token")
    return "ch_" + hashlib.sha256(f"{order_id}:{amount}".encode()).hexdigest()[:20]


def refund(*, reference: str) -> str:
    return "re_" + reference[3:]
