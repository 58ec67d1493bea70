"""In-process transport for unit tests and single-process use.

Messages are dispatched in the publishing thread, breadth first: a handler that
sends more messages queues them, and the outermost publish drains the queue, so
a long conversation never recurses. Retries are immediate (no backoff sleep) —
delays, durability and redelivery after a crash are the JetStream transport's job.
Scheduled messages (countdown/eta) stay in the outbox until `run_due()` is called
(tests call it, with a clock of their choosing).
"""

import collections
import datetime as dt
import threading
import time
from collections.abc import Sequence

import msgspec
from django.utils import timezone

from apps.mediator.core.ports import Outgoing, Transport
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.outcome import RETRY
from apps.mediator.models import Message
from apps.mediator.storage import history


class MemoryTransport(Transport):
    label = "memory"

    def __init__(self, dispatcher: Dispatcher):
        super().__init__(dispatcher)
        self._local = threading.local()

    def publish(self, batch: Sequence[Outgoing]) -> None:
        now = time.time()
        batch = [item for item in batch if item.envelope.not_before is None or item.envelope.not_before <= now]
        if not batch:
            return
        queue = getattr(self._local, "queue", None)
        if queue is None:
            queue = self._local.queue = collections.deque()
        history.mark_published([item.envelope.id for item in batch])
        queue.extend(batch)
        if getattr(self._local, "draining", False):
            return
        self._local.draining = True
        try:
            while queue:
                item = queue.popleft()
                outcome = self.dispatcher.handle(item.envelope, item.body)
                if outcome.action == RETRY:
                    env = item.envelope
                    queue.append(Outgoing(env.with_attempt(env.attempt + 1), item.body))
        finally:
            self._local.draining = False
            queue.clear()

    def run_due(self, now: float | None = None) -> int:
        """Dispatch the scheduled messages and fire the saga deadlines due at `now` (the outbox
        relay's and the consumers' timer sweep's job on NATS); how many of both."""
        moment = timezone.now() if now is None else dt.datetime.fromtimestamp(now, tz=dt.UTC)
        timers = self.dispatcher.timers
        fired = timers.fire_due(self.dispatcher.mediator.post, now=moment) if timers is not None else 0
        rows = Message.objects.filter(status=Message.Status.PENDING, available_at__lte=moment).order_by("id")
        batch = []
        for row in rows:
            item = history.outgoing_of(row)
            envelope = msgspec.structs.replace(item.envelope, not_before=None)
            batch.append(Outgoing(envelope, item.body, item.dedupe_id))
        self.publish(batch)
        return fired + len(batch)
