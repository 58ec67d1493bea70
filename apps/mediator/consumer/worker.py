"""The consumer runtime behind `manage.py run_consumer` — the Celery-worker role.

One asyncio loop owns the transport's connection: it fetches from the durable
consumers of the chosen contexts (`Subscription`s), only as many messages as there
are free handler slots, and settles each `Delivery` (ack, retry after a delay, or
dead with the reason). It knows no broker: the transport named in CATGA["TRANSPORT"]
opens the subscriptions. The handlers run in a thread pool, because they use the
ORM and the ORM must never run on the event loop. The same loop runs the outbox
relay, the health/metrics port and the heartbeat (its row in the workers view).
"""

import asyncio
import contextlib
import functools
import logging
import signal
import time
from dataclasses import dataclass, field

from django.db import close_old_connections, connection, reset_queries

from apps.mediator.consumer.handler_pool import HandlerPool
from apps.mediator.consumer.health import HealthServer
from apps.mediator.consumer.heartbeat import Heartbeat
from apps.mediator.consumer.limiter import Limiter
from apps.mediator.consumer.slots import Slots
from apps.mediator.core import roles, routing
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.envelope import H_TYPE, Envelope
from apps.mediator.core.ids import new_id
from apps.mediator.core.messages import Kind, message_type
from apps.mediator.core.ports import Delivery, Subscription, Transport
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.outcome import ACK, DEAD, RETRY, Outcome
from apps.mediator.observability import metrics
from apps.mediator.storage import outage, outbox, schedules
from apps.mediator.storage.hygiene import hygiene

logger = logging.getLogger("catga.worker")


@dataclass
class WorkerState:
    connected: bool = False
    bound: bool = False
    draining: bool = False
    last_progress: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    handled: int = 0
    database: bool = True  # the last delivery or reading reached the database (readiness)
    paused: bool = False  # drained by an operator: no fetching until resumed


class Worker:
    def __init__(
        self,
        dispatcher: Dispatcher,
        transport: Transport,
        contexts: list[str],
        *,
        concurrency: int,
        health_port: int | None = None,
        relay: bool = True,
        queues: list[str] | None = None,
    ):
        self.dispatcher = dispatcher
        self.transport = transport
        self.contexts = contexts
        self.concurrency = concurrency
        self.health_port = health_port
        self.relay = relay
        self.queues = queues  # None: every queue of the contexts
        self.state = WorkerState()
        self._rate_at, self._done_at, self._recent = time.monotonic(), 0, 0  # for _in_flight_limit
        self.stop_event: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._messages: dict[asyncio.Task, object] = {}
        self.limiter = Limiter()

    # -- lifecycle -----------------------------------------------------------

    async def start(self):
        """Connect and bind; raises ConnectionError when the message system stays unreachable."""
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.pool = HandlerPool(self.loop, self.concurrency)
        self.executor = self.pool.executor
        # More messages in flight than threads, so a thread takes several per hand-off.
        self.slots = Slots(self.concurrency * catga_settings.PREFETCH_MULTIPLIER)
        self.receiver = await self.transport.open_receiver(self.contexts, f"catga-worker-{'+'.join(self.contexts)}")
        self.state.connected = True
        self.subscriptions = [
            s
            for s in self.receiver.subscriptions
            if self.queues is None or getattr(s, "queue", routing.DEFAULT) in self.queues
        ]
        if not self.subscriptions:
            raise ConnectionError(f"no queue {', '.join(self.queues or ())} in {', '.join(self.contexts)}")
        await self.receiver.listen_at_most_once(self._on_once)
        self.state.bound = True
        self.heartbeat = Heartbeat(self, self._sync)
        logger.info(
            "consuming %s with %d handler slots", ", ".join(s.name for s in self.subscriptions), self.concurrency
        )

    async def run(self) -> None:
        health = None
        if self.health_port is not None:
            # Up before connecting, so probes see "live, not ready" while NATS is awaited.
            health = HealthServer(self)
            await health.start(self.health_port)
        await self.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests)
                self.loop.add_signal_handler(sig, self.request_stop)
        fetchers = [asyncio.create_task(self._fetch_loop(sub)) for sub in self.subscriptions]
        fetchers.append(asyncio.create_task(self._stats_loop()))  # stopped with the fetchers
        fetchers.append(asyncio.create_task(self.heartbeat.loop()))
        if self.relay:  # the replicas' upkeep: the outbox relay and the schedules' clock
            fetchers.append(asyncio.create_task(self._schedule_loop()))
        relay = asyncio.create_task(self._relay_loop()) if self.relay else None
        await self.stop_event.wait()
        await self._shutdown(fetchers, relay, health)

    def pause(self, paused: bool) -> None:
        """Drain (stop fetching, finish in-flight) or resume, as an operator asked (admin "Workers")."""
        if paused != self.state.paused:
            logger.info("%s: %s", "drained" if paused else "resumed", "no new fetches" if paused else "fetching")
            self.state.paused = paused

    def request_stop(self) -> None:
        if not self.state.draining:
            logger.info("stopping: no new fetches, finishing in-flight messages")
        self.state.draining = True
        self.stop_event.set()

    async def _shutdown(self, fetchers, relay, health) -> None:
        for task in [*fetchers, *([relay] if relay else [])]:
            task.cancel()
        await asyncio.gather(*fetchers, *([relay] if relay else []), return_exceptions=True)
        grace = catga_settings.SHUTDOWN_GRACE
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            if pending:
                logger.warning(
                    "%d message(s) did not finish within %.0fs; NAKed for prompt redelivery", len(pending), grace
                )
                for task in pending:
                    delivery = self._messages.get(task)
                    if delivery is not None:
                        with contextlib.suppress(Exception):
                            await delivery.release()
        await self.receiver.close()
        await self.heartbeat.forget()
        if health is not None:
            await health.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        logger.info("stopped after handling %d message(s)", self.state.handled)

    # -- fetching and settling ----------------------------------------------

    async def _fetch_loop(self, sub: Subscription) -> None:
        batch_max = catga_settings.FETCH_BATCH
        # Slots are reserved while a fetch waits, so an idle subscription asks for a
        # fair share only and a busy one (its last fetch came back full) for all it can.
        fair = max(1, -(-self.concurrency * catga_settings.PREFETCH_MULTIPLIER // len(self.subscriptions)))
        want = fair
        while not self.state.draining:
            if self.state.paused:  # drained: alive (and live) but taking nothing new
                self.state.last_progress = time.monotonic()
                await asyncio.sleep(0.2)
                continue
            await self.slots.resize(self._in_flight_limit())
            taken = await self.slots.take(min(want, batch_max))
            got = []
            try:
                await sub.fetch(taken, 1.0, functools.partial(self._spawn, sub, got))
            except asyncio.CancelledError:
                await self.slots.give(taken - len(got))
                raise
            except Exception as exc:  # disconnected, consumer deleted...: keep trying
                logger.warning("fetch from %s failed: %r", sub.name, exc)
                await asyncio.sleep(0.5)
            self.state.last_progress = time.monotonic()
            want = batch_max if got and len(got) == taken else fair
            await self.slots.give(taken - len(got))
            await asyncio.sleep(0)  # let subscriptions waiting for slots take them first

    def _in_flight_limit(self) -> int:
        """CONCURRENCY x PREFETCH_MULTIPLIER messages in flight, or more while handlers are fast:
        as many as this process handled in the last PREFETCH_SECONDS, so what it holds back
        from the other replicas is never more than that much work (and at most 4 x FETCH_BATCH)."""
        now = time.monotonic()
        window = catga_settings.PREFETCH_SECONDS
        elapsed = now - self._rate_at
        if window <= 0:
            self._recent = 0
        elif elapsed >= window:
            # Jobs per window, over however long it has been since the last reading.
            self._recent = int((self.pool.jobs_done - self._done_at) * window / elapsed)
            self._rate_at, self._done_at = now, self.pool.jobs_done
        base = self.concurrency * catga_settings.PREFETCH_MULTIPLIER
        return max(base, min(self._recent, 4 * catga_settings.FETCH_BATCH))

    def _spawn(self, sub: Subscription, got: list, deliveries: list[Delivery]) -> None:
        got += deliveries
        for delivery in deliveries:
            task = asyncio.create_task(self._process(sub, delivery))
            self._tasks.add(task)
            self._messages[task] = delivery
            task.add_done_callback(self._forget)

    async def _on_once(self, sub: Subscription, delivery: Delivery) -> None:
        await self.slots.take(1)  # waiting here pushes back on the at-most-once subscription
        task = asyncio.create_task(self._process_once(sub, delivery))
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    async def _process_once(self, sub: Subscription, delivery: Delivery) -> None:
        """At most once: handled once if it arrives, never acknowledged or redelivered."""
        self.state.in_flight += 1
        try:
            try:
                envelope = Envelope.from_headers(delivery.headers)
            except Exception as exc:
                await self._run(self.dispatcher.unhandled, _stand_in(delivery), delivery.body, exc)
                return
            outcome = await self._run(self.dispatcher.handle, envelope, delivery.body, context=sub.context)
            if outcome.action != ACK:
                logger.warning("at-most-once %s %s dropped: %s", envelope.type, envelope.id, outcome.reason)
            self.state.handled += 1
        except Exception:
            logger.exception("at-most-once message on %s lost", delivery.subject)
        finally:
            self.state.in_flight -= 1
            await self.slots.give(1)

    def _forget(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._messages.pop(task, None)

    async def _process(self, sub: Subscription, delivery: Delivery) -> None:
        self.state.in_flight += 1
        stray = None
        try:
            try:
                envelope = Envelope.from_headers(delivery.headers).with_attempt(delivery.attempt)
            except Exception as exc:  # UndecodableMessage, or whatever else hostile headers raise
                outcome = await self._run(self.dispatcher.unhandled, _stand_in(delivery), delivery.body, exc)
            else:
                wait = await self.limiter.wait(sub, envelope, self._sync, self.state)
                if wait is None:  # a routed type on the default consumer: its own queue handles it
                    await delivery.ack()
                    return
                if wait:  # over its type's limit: back to the broker until its turn, no attempt spent
                    await delivery.retry(wait)
                    return
                with self.limiter.running(envelope.type):
                    outcome, stray = await self._handle_watched(sub, delivery, envelope)
            self.state.database = not outcome.outage
            await self._settle(sub, delivery, outcome)
            self.state.handled += 1
        except Exception:
            logger.exception("could not settle a message from %s; it will be redelivered", sub.name)
        finally:
            self.state.in_flight -= 1
            if stray is not None:
                # The handler thread outlived its timeout: its slot is free only when it ends.
                await asyncio.wait({stray})
            await self.slots.give(1)

    async def _handle_watched(self, sub: Subscription, delivery: Delivery, envelope: Envelope):
        """Run the handlers, telling the transport we are alive while they work, up to their timeout.

        On timeout the message is settled at once (retried or buried); the thread, which
        Python cannot kill, is returned as a stray so its slot stays taken until it ends.
        Should it still commit, its effects are guarded by the inbox: the retry skips them.
        """
        job = self.pool.submit(
            self.dispatcher.handle, envelope, delivery.body, context=sub.context, group=self.dispatcher.handle_many
        )
        future = job.future
        cls = message_type(envelope.type)
        timeout = (cls.options.timeout if cls is not None else None) or catga_settings.HANDLER_TIMEOUT
        heartbeat = max(0.5, catga_settings.ACK_WAIT / 3)
        while True:
            # The timeout counts from when a thread starts the handler, not from the fetch.
            left = timeout if job.started is None else job.started + timeout - time.monotonic()
            done, _ = await asyncio.wait({future}, timeout=max(0.01, min(heartbeat, left)))
            if done:
                return future.result(), None
            if job.started is not None and time.monotonic() >= job.started + timeout:
                logger.warning("%s %s ran past its %gs timeout; retrying it", envelope.type, envelope.id, timeout)
                self.pool.requeue_waiting(job)
                future.add_done_callback(lambda _: self.dispatcher.stray_ended(envelope, sub.context))
                # Recorded off the handler threads: they may all be held by strays.
                outcome = await self.loop.run_in_executor(
                    None, _in_thread, self.dispatcher.timed_out, (envelope, sub.context, timeout), {}
                )
                return outcome, future
            await delivery.touch()
            if job.started is not None:  # running within its timeout is progress; queued behind a stuck thread is not
                self.state.last_progress = time.monotonic()

    def _sync(self, func, *args):
        """Run ORM work that is not a handler's in a thread of the loop's default executor."""
        return self.loop.run_in_executor(None, _in_thread, func, args, {})

    async def _run(self, func, *args, **kwargs) -> Outcome:
        return await self.pool.submit(func, *args, **kwargs).future

    async def _settle(self, sub: Subscription, delivery: Delivery, outcome: Outcome) -> None:
        metrics.count_settled(delivery.headers.get(H_TYPE, ""), sub.context, outcome.action, outage=outcome.outage)
        if outcome.action == ACK:
            await delivery.ack()
        elif outcome.action == RETRY:
            await delivery.retry(outcome.delay)
        elif outcome.action == DEAD:
            await delivery.dead(outcome.reason)

    async def _relay_loop(self) -> None:
        interval = catga_settings.RELAY_INTERVAL
        # What this process's role may publish (CATGA["ROLE"]): its relay takes only those rows.
        types = roles.publishable_names(self.dispatcher.registry)
        hooks = self.dispatcher.workflows  # an expired chain or group member fails its workflow
        expiry = {"on_expired": hooks.members_cancelled} if hooks is not None else {}
        while True:
            try:
                published = await self.loop.run_in_executor(
                    None, _in_thread, outbox.drain, (self.transport.publish_blocking,), {"types": types, **expiry}
                )
                if published:
                    logger.info("outbox relay published %d message(s)", published)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("outbox relay sweep failed", exc_info=True)
            await asyncio.sleep(interval)

    async def _schedule_loop(self) -> None:
        """Fire the due ticks of the periodic schedules this replica can claim (storage/schedules.py)
        and the passed deadlines of the saga steps whose Timeout it may publish."""
        interval = min(catga_settings.RELAY_INTERVAL, 1.0)
        post, timers = self.dispatcher.mediator.post, self.dispatcher.timers
        types = roles.publishable_names(self.dispatcher.registry)
        synced = False
        while True:
            try:
                if not synced:
                    await self._sync(schedules.sync_declared)
                    synced = True
                fired = await self._sync(functools.partial(schedules.fire_due, post))
                if fired:
                    logger.info("schedules fired %d tick(s)", fired)
                if timers is not None:
                    timed_out = await self._sync(functools.partial(timers.fire_due, post, types=types))
                    if timed_out:
                        logger.info("saga step deadlines fired %d timeout(s)", timed_out)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away: ticks and deadlines wait in their tables, nothing is lost
                logger.warning("schedule sweep failed", exc_info=True)
            await asyncio.sleep(interval)

    async def _stats_loop(self) -> None:
        """Refresh the gauges of consumer lag, stream sizes and outbox backlog."""
        interval = catga_settings.METRICS_INTERVAL
        while True:
            try:
                metrics.set_backlog(await asyncio.wait_for(self.receiver.backlog(), timeout=interval))
                backlog = await self.loop.run_in_executor(None, _in_thread, outbox.backlog, (), {})
                metrics.set_outbox_backlog(backlog)
                self.state.database = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS or the database away: keep the last values, try again
                if outage.unavailable(exc):
                    self.state.database = False
                logger.debug("metrics refresh failed: %r", exc)
            await asyncio.sleep(interval)


def _in_thread(func, args, kwargs):
    """Run ORM work with Django's connection hygiene (storage/hygiene.py), and at once after an error."""
    reset_queries()
    hygiene()
    try:
        return func(*args, **kwargs)
    finally:
        if connection.errors_occurred:
            close_old_connections()


def _stand_in(delivery: Delivery) -> Envelope:
    """An envelope for a message whose headers are unusable, so it can be recorded."""
    headers = delivery.headers
    message_id = new_id()
    return Envelope(
        id=message_id,
        type=headers.get(H_TYPE) or f"(unknown on {delivery.subject})",
        kind=Kind.COMMAND if ".cmd." in delivery.subject else Kind.EVENT,
        correlation_id=message_id,
        created_at=time.time(),
    )
