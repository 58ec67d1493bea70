"""What the dispatcher decides for one delivery, and how long a retry waits.

The transport only turns an Outcome into its own settlement (ack, a retry after
`delay`, a dead letter with `reason`); the decision is made in the dispatcher, once.
"""

import enum
import random
from dataclasses import dataclass
from typing import Any

from apps.mediator.core.conf import catga_settings


class Action(enum.StrEnum):
    ACK = "ack"
    RETRY = "retry"
    DEAD = "dead"


ACK, RETRY, DEAD = Action.ACK, Action.RETRY, Action.DEAD


@dataclass(frozen=True)
class Outcome:
    action: Action
    delay: float = 0.0
    reason: str = ""
    result: Any = None
    duplicate: bool = False
    outage: bool = False  # the database could not be reached: no attempt was spent


OUTAGE = "database unavailable"


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, times 0.5-1.0."""
    base = catga_settings.RETRY_BACKOFF * (2 ** max(attempt - 1, 0))
    return min(base, catga_settings.RETRY_BACKOFF_MAX) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not crypto)


def outage_backoff(deliveries: int) -> float:
    """Retry delay while the database is away: growing, capped at OUTAGE_RETRY_MAX, never giving up."""
    base = catga_settings.RETRY_BACKOFF * (2 ** min(max(deliveries - 1, 0), 16))
    return min(base, catga_settings.OUTAGE_RETRY_MAX) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
