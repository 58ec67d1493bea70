"""A deterministic fake payment provider, driven by test tokens like Stripe's.

tok_visa      succeeds
tok_declined  is declined (permanent: retrying cannot help)
tok_flaky     fails transiently on the first two attempts, then succeeds
anything else is declined as an unknown card

With FAKE_PROVIDER_OUTAGE=1 in the environment every charge fails transiently, as
when the real provider is down; FAKE_PROVIDER_DELAY=<seconds> makes every charge that
slow (used to exercise retries, dead letters, replay, heartbeats and timeouts).
"""

import hashlib
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


def charge(*, token: str, amount: Decimal, order_id: str, attempt: int) -> str:
    """Capture `amount`; returns the provider's charge reference."""
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
