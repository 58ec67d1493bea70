"""JetStream publishing from Django's sync world.

`NatsTransport.publish` is called after commit from request threads, management
commands and handler threads. It never blocks on the network: the batch goes to
an asyncio loop on a daemon thread that owns the connection (or to run_consumer's
own loop when attached). What cannot be published in time stays `pending` in the
outbox for the relay. The loop thread is recreated after fork (gunicorn preload).

Publishes are coalesced: whatever is handed over while a flush is waiting for the
loop joins that flush, which publishes it pipelined and waits for all the acks at once.
The acked rows are marked published a moment later (MARK_DELAY), in one statement for
every flush of that moment: by then most were handled, and the mark (of rows still
pending only) writes nothing for them; each skipped write is a row version and an entry
in every index of the history saved (issue 16). The delay is well inside RELAY_GRACE, so
the relay does not take a row whose mark is on its way; a mark lost with the process
means the relay re-sends the row, and JetStream's de-duplication drops the copy.
"""

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from django.db import connections
from nats.js.errors import NotFoundError

from apps.mediator.core import roles
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import SUBJECT_SEGMENT, QoS
from apps.mediator.core.ports import Outgoing, Transport
from apps.mediator.storage import history
from apps.mediator.storage.hygiene import hygiene
from apps.mediator.transports.nats import connection, stats, topology
from apps.mediator.transports.nats.subscription import NatsReceiver

logger = logging.getLogger("catga.nats")

CONSUMER_PENDING_TIMEOUT = 1.0  # seconds the dashboard waits for JetStream before showing "n/a"


def subject_of(envelope: Envelope) -> str:
    context, _, name = envelope.type.partition(".")
    subject = f"{context}.{SUBJECT_SEGMENT[envelope.kind]}.{name}"
    if envelope.qos is QoS.AT_MOST_ONCE:
        return topology.at_most_once_subject(subject)
    return f"{topology.prefix()}.{subject}"


async def _cancel_others() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


MARK_DELAY = 1.0  # seconds; at most a quarter of RELAY_GRACE


def mark_delay() -> float:
    return min(MARK_DELAY, catga_settings.RELAY_GRACE / 4)


def _mark_published(ids: list[str]) -> None:
    hygiene()
    history.mark_published(ids)


class NatsTransport(Transport):
    label = "NATS"

    @property
    def url(self) -> str:
        return catga_settings.NATS_URL

    def __init__(self, dispatcher):
        super().__init__(dispatcher)
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc = None
        self._js = None
        self._connected: asyncio.Event | None = None
        self._owns_loop = False
        # One thread owns the DB connection used to mark rows published; the loop never touches the ORM.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catga-outbox-mark")
        self._inflight: set[concurrent.futures.Future] = set()
        # Handed over, not yet taken by a flush; `_flush_pending` is the flush that will take them.
        self._queue: list[Outgoing] = []
        self._flush_pending: concurrent.futures.Future | None = None
        # Acked, their rows not yet marked published; the loop's task that will mark them.
        self._to_mark: list[str] = []
        self._marking: asyncio.Task | None = None

    # -- wiring --------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop, nc, js) -> None:
        """Share run_consumer's loop and connection instead of starting a thread."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget_pending()
            self._pid, self._loop, self._nc, self._js = os.getpid(), loop, nc, js
            self._owns_loop = False
            self._connected = asyncio.Event()
            self._connected.set()

    def connect_in_background(self) -> None:
        """Start connecting now (gunicorn's post_worker_init), not on the first publish or probe."""
        self._ensure_loop()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                if self._pid != os.getpid():
                    self._forget_pending()
                self._pid = os.getpid()
                self._loop = asyncio.new_event_loop()
                self._owns_loop = True
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._run_loop, args=(self._loop, ready), daemon=True, name="catga-nats-publisher"
                )
                thread.start()
                ready.wait()
            return self._loop

    def _forget_pending(self) -> None:
        """After fork: what the parent's loop had on its way is the parent's; a flush or mark
        task inherited from it would never run here, and would hold back every one of ours."""
        self._queue, self._flush_pending = [], None
        self._to_mark, self._marking = [], None
        # The parent's marking thread did not survive the fork: a pool holding it would queue forever.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catga-outbox-mark")

    def _run_loop(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        self._connected = asyncio.Event()
        loop.create_task(self._connect_forever())
        ready.set()
        loop.run_forever()

    async def _connect_forever(self) -> None:
        while True:
            try:
                nc = await connection.connect(f"catga-publisher-{os.getpid()}", attempts=1)
                js = nc.jetstream()
                await topology.ensure_topology(js, self.registry)
            except Exception as exc:
                logger.warning("publisher cannot reach NATS yet (%r); the outbox relay will catch up", exc)
                await asyncio.sleep(1.0)
                continue
            self._nc, self._js = nc, js
            self._connected.set()
            return

    # -- publishing ----------------------------------------------------------

    @functools.cached_property
    def publishable(self) -> frozenset[str] | None:
        """The wire names this process's NATS user may publish (CATGA["ROLE"]); None: any."""
        return roles.publishable_names(self.registry)

    def publish(self, batch: Sequence[Outgoing]) -> None:
        now = time.time()
        due = [item for item in batch if item.envelope.not_before is None or item.envelope.not_before <= now]
        if self.publishable is not None:
            # NATS would refuse the rest (and time out): they wait in the outbox for the
            # relay of a context that may send them (an admin replay of an event, say).
            due = [item for item in due if item.envelope.type in self.publishable]
        if not due:
            return  # scheduled: the relay publishes it when it is due
        loop = self._ensure_loop()
        with self._lock:
            self._queue.extend(due)
            if self._flush_pending is not None:
                return  # joins the flush already on its way to the loop
            future = self._flush_pending = concurrent.futures.Future()
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        loop.call_soon_threadsafe(lambda: loop.create_task(self._flush(future)))

    async def _flush(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
            self._flush_pending = None
        try:
            await self._publish_and_mark(batch)
        except Exception:  # the rows stay pending: the relay publishes them
            logger.warning("publishing %d message(s) failed; the outbox relay will retry", len(batch), exc_info=True)
        finally:
            future.set_result(None)

    async def _publish_and_mark(self, batch: Sequence[Outgoing]) -> None:
        acked = await self.publish_now(batch)
        if acked:
            self._to_mark.extend(acked)
            if self._marking is None:
                self._marking = asyncio.get_running_loop().create_task(self._mark_soon())

    async def _mark_soon(self) -> None:
        """After MARK_DELAY (or at once when cancelled: close), mark what was acked meanwhile."""
        done = concurrent.futures.Future()  # close() waits for it with the flushes
        self._inflight.add(done)
        done.add_done_callback(self._inflight.discard)
        try:
            await asyncio.sleep(mark_delay())
        except asyncio.CancelledError:
            pass
        finally:
            self._marking = None
            ids, self._to_mark = self._to_mark, []
            try:
                await asyncio.get_running_loop().run_in_executor(self._db, _mark_published, ids)
            except Exception:  # the rows stay pending: the relay re-sends them, de-duplicated
                logger.warning("could not mark %d message(s) published", len(ids), exc_info=True)
            finally:
                done.set_result(None)

    async def publish_now(self, batch: Sequence[Outgoing]) -> list[str]:
        """Publish with Nats-Msg-Id and wait for JetStream's acks; returns the acked ids.

        AtMostOnce messages go out on core NATS, fire and forget, and count as sent.
        """
        timeout = catga_settings.PUBLISH_TIMEOUT
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return []
        futures = []
        fired = []
        for item in batch:
            if item.envelope.qos is QoS.AT_MOST_ONCE:
                try:
                    await self._nc.publish(subject_of(item.envelope), item.body, headers=item.headers())
                    fired.append(item.envelope.id)
                except Exception as exc:
                    logger.warning("at-most-once publish of %s dropped: %r", item.envelope.id, exc)
                continue
            try:
                future = await self._js.publish_async(
                    subject_of(item.envelope), item.body, headers=item.headers(), wait_stall=timeout
                )
            except Exception as exc:
                logger.warning("publish of %s failed: %r", item.envelope.id, exc)
                continue
            futures.append((item.envelope.id, future))
        acked = []
        if futures:
            # One wait for the whole batch: the acks arrive pipelined, in any order.
            await asyncio.wait([f for _, f in futures], timeout=timeout)
        for message_id, future in futures:
            if not future.done():
                future.cancel()
                logger.warning("no JetStream ack for %s within %ss", message_id, timeout)
            elif future.cancelled() or future.exception() is not None:
                logger.warning(
                    "no JetStream ack for %s: %r", message_id, None if future.cancelled() else future.exception()
                )
            else:
                acked.append(message_id)
        return acked + fired

    def publish_blocking(self, batch: Sequence[Outgoing], timeout: float | None = None) -> list[str]:
        """For sync callers that must know the result (the outbox relay)."""
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self.publish_now(batch), loop)
        return future.result(timeout or catga_settings.PUBLISH_TIMEOUT * 3)

    async def publish_raw(self, subject: str, body: bytes, headers: dict) -> None:
        await self._connected.wait()
        await self._js.publish(subject, body, headers=headers, timeout=catga_settings.PUBLISH_TIMEOUT)

    def probe(self, timeout: float) -> list[str]:
        """Readiness of this process's publisher: what is wrong (connection, streams), [] when nothing.

        Answers within `timeout` whatever NATS does; the first call starts the connection.
        """
        future = asyncio.run_coroutine_threadsafe(self._probe(timeout / 2), self._ensure_loop())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return [f"NATS did not answer within {timeout:g}s"]

    async def _probe(self, connect_budget: float) -> list[str]:
        if self._nc is None:
            # This process's first connection may be on its way (a new gunicorn worker, one
            # recycled by max_requests): answering "not connected" before it had a chance
            # would flap the pod's readiness whenever the probe lands on such a worker.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), connect_budget)
        if self._nc is None or not self._nc.is_connected:
            return ["not connected to NATS"]
        missing = []
        for name in (topology.stream_name(kind) for kind in ("CMD", "EVT", "DLQ")):
            try:
                await self._js.stream_info(name)
            except NotFoundError:
                missing.append(name)
        return [f"stream(s) missing: {', '.join(missing)}"] if missing else []

    def consumer_pending(self, timeout: float = CONSUMER_PENDING_TIMEOUT) -> dict[str, int]:
        """Messages waiting per durable consumer (JetStream's num_pending), for the admin dashboard.

        Called from a web request: answers within `timeout` whatever NATS does, and {}
        (shown as "n/a") when NATS is unreachable or slow. The first call starts the connection.
        """
        loop = self._ensure_loop()
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                return {}  # on the loop itself a blocking wait would never end
        future = asyncio.run_coroutine_threadsafe(self._consumer_pending(stats.snapshot, timeout), loop)
        try:
            return future.result(timeout + 0.5)
        except Exception as exc:  # NATS refusing, or the loop too busy to answer: the dashboard says n/a
            future.cancel()
            logger.info("consumer pending counts unavailable: %r", exc)
            return {}

    async def _consumer_pending(self, snapshot, timeout: float) -> dict[str, int]:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
                if self._nc is None or not self._nc.is_connected:
                    return {}
                wanted = topology.durables(self.registry, self.registry.contexts)
                found = await snapshot(self._js, durables=wanted)
        except TimeoutError:
            return {}
        return {consumer.name: consumer.pending for consumer in found.consumers}

    async def open_receiver(self, contexts, name: str):
        return await NatsReceiver.open(self, contexts, name)

    async def backlog(self):
        """Every stream and consumer of the app, on a connection of its own (catga_status)."""
        nc = await connection.connect("catga-status", attempts=1)
        try:
            return await stats.snapshot(nc.jetstream())
        finally:
            await nc.close()

    def close(self) -> None:
        # Let publishes handed over just before exit finish (the relay would catch up, but
        # later), and their marks be written now rather than after MARK_DELAY.
        marking, loop = self._marking, self._loop
        if marking is not None and loop is not None and self._pid == os.getpid():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(marking.cancel)
        concurrent.futures.wait(list(self._inflight), timeout=catga_settings.PUBLISH_TIMEOUT * 2)
        with contextlib.suppress(RuntimeError):  # at interpreter exit the pool is already shut
            self._db.submit(connections.close_all).result(10)
        loop = self._loop
        if loop is None or not self._owns_loop or self._pid != os.getpid():
            return
        if self._nc is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._nc.drain(), loop).result(5)
            except Exception:  # closing at exit: nothing useful left to do with an error
                logger.debug("NATS drain at close failed", exc_info=True)
        # A connect still retrying (NATS never came) is cancelled, not left pending: a loop
        # stopped under it logs "Task was destroyed but it is pending" at exit.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_others(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._loop = None
