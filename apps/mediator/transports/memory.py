"""In-process transport for unit tests and single-process use.

Messages are dispatched in the publishing thread, breadth first: a handler that
sends more messages queues them, and the outermost publish drains the queue, so
a long conversation never recurses. Retries are immediate (no backoff sleep) —
delays, durability and redelivery after a crash are the JetStream transport's job.
"""

import collections
import threading
from collections.abc import Sequence

from apps.mediator import history
from apps.mediator.dispatcher import RETRY, Dispatcher
from apps.mediator.transports.base import Outgoing, Transport


class MemoryTransport(Transport):
    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher
        self._local = threading.local()

    def publish(self, batch: Sequence[Outgoing]) -> None:
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
