"""Per-type limits: how many of a message type may start per second (across every replica)
and how many may run at once in one process.

Declared on the type (`Meta.rate_limit = "10/s"`, `Meta.concurrency = 2`) or in settings,
which win: CATGA["RATE_LIMITS"] = {"payments.ChargePayment": "10/s"} and
CATGA["CONCURRENCY_LIMITS"] = {"payments.ChargePayment": 2}. A message over a limit waits
(it is redelivered when its turn comes); it is never dropped, and it spends no attempt.
"""

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.messages import message_type

PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """ "10/s" -> 10.0 per second; ValueError says what is wrong."""
    count, _, unit = str(text).strip().partition("/")
    try:
        number = float(count)
    except ValueError:
        number = -1.0
    if unit not in PER or number <= 0:
        raise ValueError(f"rate limit {text!r} is not <number>/<s|m|h>, e.g. '10/s'")
    return number / PER[unit]


def rate_for(wire_name: str) -> float | None:
    """Starts per second allowed for this type, or None when it has no limit."""
    text = catga_settings.RATE_LIMITS.get(wire_name)
    if text is None:
        cls = message_type(wire_name)
        text = cls.options.rate_limit if cls is not None else None
    return parse_rate(text) if text else None


def concurrency_for(wire_name: str) -> int | None:
    cap = catga_settings.CONCURRENCY_LIMITS.get(wire_name)
    if cap is None:
        cls = message_type(wire_name)
        cap = cls.options.concurrency if cls is not None else None
    return cap


def check() -> list[str]:
    """What is wrong with the configured limits (run_consumer refuses to start on any)."""
    problems = []
    for name, text in catga_settings.RATE_LIMITS.items():
        try:
            parse_rate(text)
        except ValueError as exc:
            problems.append(f'CATGA["RATE_LIMITS"][{name!r}]: {exc}')
    for name, cap in catga_settings.CONCURRENCY_LIMITS.items():
        if not isinstance(cap, int) or cap < 1:
            problems.append(f'CATGA["CONCURRENCY_LIMITS"][{name!r}]: {cap!r} is not a whole number of 1 or more')
    return problems
