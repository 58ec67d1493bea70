"""The receiving side of the JetStream transport: durable pull consumers and their settlement.

The worker asks a `NatsSubscription` for deliveries and settles each `NatsDelivery`:
ack → ack, retry(delay) → NAK with delay, touch → in-progress, dead(reason) → the
message with the reason in its headers on the dead-letter stream, then TERM.
At-most-once messages arrive on core NATS subjects, shared by a queue group per durable.
"""

import asyncio
import contextlib
import functools
import json
import logging
import time

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

from apps.mediator.core.envelope import H_DEDUPE, H_ID
from apps.mediator.core.ids import new_id
from apps.mediator.core.ports import Backlog, OnceHandler, Receiver
from apps.mediator.transports.nats import connection, stats, topology

logger = logging.getLogger("catga.nats")

H_DEAD_REASON = "Catga-Dead-Reason"
H_DEAD_SUBJECT = "Catga-Original-Subject"
H_DEAD_CONSUMER = "Catga-Dead-Consumer"
H_DEAD_AT = "Catga-Dead-At"


class NatsDelivery:
    __slots__ = ("_js", "_msg", "_sub", "attempt", "body", "headers", "subject")

    def __init__(self, sub: "NatsSubscription | None", js, msg):
        self._sub, self._js, self._msg = sub, js, msg
        self.headers = msg.headers or {}
        self.body = msg.data
        self.subject = msg.subject
        self.attempt = msg.metadata.num_delivered if sub is not None else 1

    async def ack(self) -> None:
        await self._msg.ack()

    async def retry(self, delay: float) -> None:
        await self._msg.nak(delay=delay)

    async def touch(self) -> None:
        await self._msg.in_progress()

    async def release(self) -> None:
        await self._msg.nak()

    async def dead(self, reason: str) -> None:
        msg = self._msg
        headers = dict(self.headers)
        original_id = headers.get(H_ID) or headers.get(H_DEDUPE) or new_id()
        headers.update(
            {
                H_DEAD_REASON: reason[:1000],
                H_DEAD_SUBJECT: msg.subject,
                H_DEAD_CONSUMER: self._sub.name,
                H_DEAD_AT: repr(time.time()),
                # Unique per stored message, so a replayed copy that dies again is recorded
                # again, and so is each of several messages claiming one id (forgeries);
                # stable across redeliveries, so dying twice (a crash before term) is one letter.
                H_DEDUPE: f"{original_id}.dead.{msg.metadata.stream}.{msg.metadata.sequence.stream}",
            }
        )
        await self._js.publish(topology.dlq_subject(msg.subject), msg.data, headers=headers)
        await msg.term()


class NatsSubscription:
    def __init__(self, durable: topology.Durable, js, sub):
        self.durable, self.name, self.context, self.queue = durable, durable.name, durable.context, durable.queue
        self._js, self._sub = js, sub

    async def fetch(self, most: int, timeout: float, spawn) -> None:
        """Up to `most` deliveries: a long poll for the first, then whatever else is there right now.

        nats-py's `fetch(n)` keeps waiting for the batch to fill once it had to wait at all,
        which holds the first message of a quiet moment back for the whole timeout; a
        one-message long poll answers the moment something arrives (and it is handed to
        `spawn` at once), then a no-wait pull (answered at once, by the server) adds what
        is queued behind it. An empty poll is normal and returns nothing.
        """
        try:
            first = await self._sub.fetch(1, timeout=timeout)
        except (TimeoutError, NatsTimeoutError):
            return
        spawn(self._wrap(first))
        if most > 1 and first:
            spawn(self._wrap(await self._fetch_now(most - 1)))

    def _wrap(self, messages: list) -> list[NatsDelivery]:
        return [NatsDelivery(self, self._js, msg) for msg in messages]

    async def _fetch_now(self, most: int) -> list:
        """A no-wait pull of up to `most` messages (nats-py has no public call for it)."""
        sub = self._sub
        inbox = sub._sub  # the pull subscription's own inbox, where nats-py's fetch reads too
        messages = []
        while len(messages) < most and not inbox._pending_queue.empty():  # left by an earlier pull
            msg = inbox._pending_queue.get_nowait()
            inbox._pending_size -= len(msg.data)
            if not JetStreamContext.is_status_msg(msg):
                messages.append(msg)
        if len(messages) == most:
            return messages
        request = json.dumps({"batch": most - len(messages), "no_wait": True}).encode()
        await sub._nc.publish(sub._nms, request, sub._deliver)
        while len(messages) < most:
            try:
                msg = await inbox.next_msg(timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                break
            if JetStreamContext.is_status_msg(msg):
                break  # 404: nothing more right now (or the end of an earlier, expired pull)
            messages.append(msg)
        return messages


class NatsReceiver(Receiver):
    def __init__(self, nc, js, subscriptions: list[NatsSubscription]):
        self.nc, self.js, self.subscriptions = nc, js, subscriptions

    @classmethod
    async def open(cls, transport, contexts, name: str) -> "NatsReceiver":
        nc = await connection.connect(name)
        js = nc.jetstream()
        transport.attach(asyncio.get_running_loop(), nc, js)
        registry = transport.registry
        durables = await topology.ensure_topology(js, registry, registry.contexts)
        subscriptions = []
        for durable in (d for d in durables if d.context in contexts):
            sub = await js.pull_subscribe_bind(durable=durable.name, stream=durable.stream)
            subscriptions.append(NatsSubscription(durable, js, sub))
        return cls(nc, js, subscriptions)

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def listen_at_most_once(self, handler: OnceHandler) -> None:
        for subscription in self.subscriptions:
            for subject in subscription.durable.subjects:
                await self.nc.subscribe(
                    topology.at_most_once_subject(subject.removeprefix(topology.prefix() + ".")),
                    queue=subscription.name,
                    cb=functools.partial(self._on_core_message, handler, subscription),
                )

    async def _on_core_message(self, handler: OnceHandler, subscription: NatsSubscription, msg) -> None:
        await handler(subscription, NatsDelivery(None, self.js, msg))

    async def backlog(self) -> Backlog:
        return await stats.snapshot(self.js, durables=[s.durable for s in self.subscriptions])

    async def close(self) -> None:
        # Every fetched message is settled by now; unsubscribe, make sure the acks are
        # on the wire, then close (drain() would wait on the pull inboxes for nothing).
        for subscription in self.subscriptions:
            with contextlib.suppress(Exception):
                await subscription._sub.unsubscribe()
        try:
            await asyncio.wait_for(self.nc.flush(), timeout=5)
        except Exception:
            logger.warning("could not flush the last acknowledgements", exc_info=True)
        await self.nc.close()
