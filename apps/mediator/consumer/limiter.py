"""The worker's side of per-type routing and limits (core/routing.py, core/limits.py):
may this delivery start now?

A routed type seen on its context's default command consumer is not this consumer's: it
is acknowledged unhandled (its own queue's consumer has it too).

The concurrency cap counts this process's running handlers of a type; the rate limit asks
PostgreSQL for a start slot shared by every replica (storage/rate_limits.py). Either way
a delivery that must wait goes back to the broker with the wait as its delay: it holds
no handler slot while it waits, and no attempt is spent.
"""

import collections
import contextlib
import logging

from apps.mediator.core import limits, routing
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.envelope import Envelope
from apps.mediator.storage import outage, rate_limits

logger = logging.getLogger("catga.worker")

CAP_WAIT = 0.2  # seconds before a delivery over its type's concurrency cap is offered again


class Limiter:
    def __init__(self) -> None:
        self._running: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def running(self, wire_name: str):
        self._running[wire_name] += 1
        try:
            yield
        finally:
            self._running[wire_name] -= 1

    async def wait(self, sub, envelope: Envelope, sync, state) -> float | None:
        """Seconds this delivery must wait for its type's limits; 0: start it now; None: not ours."""
        if routing.queue_for(envelope.type) != getattr(sub, "queue", routing.DEFAULT):
            return None
        cap = limits.concurrency_for(envelope.type)
        if cap is not None and self._running[envelope.type] >= cap:
            return CAP_WAIT
        rate = limits.rate_for(envelope.type)
        if rate is None:
            return 0.0
        try:
            return await sync(rate_limits.acquire, envelope.type, rate, envelope.id)
        except Exception as exc:  # never run past the limit: wait, and say why
            if outage.unavailable(exc):
                state.database = False
                return catga_settings.OUTAGE_RETRY_MAX
            logger.warning("rate limit of %s unreadable; %s waits", envelope.type, envelope.id, exc_info=True)
            return 1.0
