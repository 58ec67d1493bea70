"""The faults, injected on a schedule while the orders flow, each followed by the repair.

Each kind takes a part of the stack away and brings it back, then waits (bounded)
until the stack is whole again before the next fault is due:

consumer killed       SIGKILL of one run_consumer (contexts in turn), restarted
consumer frozen       SIGSTOP of one run_consumer past its ack wait, then SIGCONT (a long GC pause,
                      a throttled or partitioned pod): JetStream redelivers what it was handling
                      while it still finishes it, the inbox must keep the effects single
web server killed     SIGKILL of gunicorn's whole process group, restarted on the same port
delivered again       a batch of messages already handled published once more under a fresh
                      JetStream de-duplication key (an outbox relay that re-sends after the
                      duplicate window, a publisher retrying): the inbox must apply none twice
NATS restarted        every node of the cluster stopped, then started again
PostgreSQL restarted  an immediate shutdown (a crash: no checkpoint, recovery on start), started again
PostgreSQL outage     PostgreSQL stopped for `db_outage` seconds (a managed failover; 180 in the
                      full run, longer than MAX_ATTEMPTS x ACK_WAIT with the default settings and
                      than a saga step's timeout): nothing may be cancelled or dead-lettered for it
                      (injected once per run, whatever the count)
poison storm          POISON messages of every garbage.py kind, valid-looking and not, published
                      at once to the app's subjects: each must end as a dead letter with its
                      reason within the run, and the orders beside them must go on
NATS node lost        SIGKILL of a node that leads neither app stream, restarted once it was missed
stream leader lost    SIGKILL of the node leading a stream (CMD and EVT in turn), restarted once
                      another node took over

On Redis (`--transport redis`) the three NATS faults give way to two of its own:
Redis restarted       the server stopped (SIGTERM: it writes its AOF out), then started again
Redis killed          SIGKILL of the server (a crash: the AOF keeps every write it had made, as
                      Redis writes it before answering), then started again
"""

import json
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tests.reliability import garbage
from tests.reliability.stack import CONTEXTS, STREAMS, wait_until

KINDS = (
    "consumer killed",
    "NATS node lost",
    "consumer frozen",
    "delivered again",
    "web server killed",
    "PostgreSQL restarted",
    "stream leader lost",
    "poison storm",
    "PostgreSQL outage",
    "NATS restarted",
)
REDIS_KINDS = (
    "consumer killed",
    "Redis killed",
    "consumer frozen",
    "delivered again",
    "web server killed",
    "PostgreSQL restarted",
    "poison storm",
    "PostgreSQL outage",
    "Redis restarted",
)
ONCE = {"PostgreSQL outage"}  # long: once per run, however many faults
REDELIVERED = 60  # messages each "delivered again" publishes once more
POISON = 130  # messages each "poison storm" publishes (ten of each garbage kind)
# Seconds each part stays away before it is brought back.
DOWN = {
    "consumer killed": 2.0,
    "consumer frozen": 0.0,  # the ack wait, plus a little (see _freeze)
    "delivered again": 0.0,
    "NATS node lost": 6.0,
    "web server killed": 2.0,
    "PostgreSQL restarted": 3.0,
    "stream leader lost": 6.0,
    "NATS restarted": 5.0,
    "poison storm": 0.0,
    "PostgreSQL outage": 0.0,  # db_outage (see _postgres_outage)
    "Redis restarted": 5.0,
    "Redis killed": 3.0,
}


def kinds_for(transport: str) -> tuple[str, ...]:
    return REDIS_KINDS if transport == "redis" else KINDS


@dataclass
class Fault:
    kind: str
    at: float  # seconds into the load
    detail: str
    recovered_after: float | None  # seconds until the stack was whole again (None: it was not)
    in_flight: int | None  # orders pending when it struck


class Faults(threading.Thread):
    """Injects `count` faults, every kind in turn, spread over the first 85% of `duration`.

    A fault is due at its time or when the one before it is repaired, whichever is later,
    so that each lands while the orders still flow.
    """

    def __init__(
        self, stack, *, duration: float, count: int, db_outage: float, recover_timeout: float = 120, kinds=KINDS
    ):
        super().__init__(daemon=True, name="faults")
        count = max(count, len(kinds))
        self.stack = stack
        every = kinds
        kinds = [every[i % len(every)] for i in range(count)]
        kinds = [k for i, k in enumerate(kinds) if i < len(every) or k not in ONCE]
        self.schedule = [(duration * (0.08 + 0.77 * i / len(kinds)), kind) for i, kind in enumerate(kinds)]
        self.db_outage = db_outage
        self.poison: list[garbage.Garbage] = []  # what the storms sent: checks.verify expects each dead
        self.recover_timeout = recover_timeout
        self.injected: list[Fault] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._turn = {"consumer killed": 0, "consumer frozen": 1, "stream leader lost": 0}

    def run(self) -> None:
        started = time.monotonic()
        for at, kind in self.schedule:
            if self.stop.wait(max(0.0, started + at - time.monotonic())):
                return
            in_flight = self.stack.in_flight()
            began = time.monotonic()
            detail, recovered = "", None
            try:
                detail = self.inject(kind)
                wait_until(self.stack.whole, timeout=self.recover_timeout, what=f"the stack to recover from {kind}")
                recovered = time.monotonic() - began
            except Exception as exc:  # recorded; the run reports it and the invariants still get checked
                self.errors.append(f"{kind} at {began - started:.0f}s: {exc}")
            self.injected.append(Fault(kind, began - started, detail, recovered, in_flight))

    def _away(self, kind: str) -> None:
        self.stop.wait(DOWN[kind])

    def inject(self, kind: str) -> str:
        action: Callable[[], str] = {
            "consumer killed": self._consumer,
            "consumer frozen": self._freeze,
            "delivered again": self._deliver_again,
            "web server killed": self._web,
            "NATS restarted": self._nats_restart,
            "PostgreSQL restarted": self._postgres,
            "NATS node lost": self._node,
            "stream leader lost": self._leader,
            "PostgreSQL outage": self._postgres_outage,
            "poison storm": self._poison_storm,
            "Redis restarted": self._redis_restart,
            "Redis killed": self._redis_kill,
        }[kind]
        return action()

    def _consumer(self) -> str:
        django = self.stack.django
        context = CONTEXTS[self._turn["consumer killed"] % len(CONTEXTS)]
        self._turn["consumer killed"] += 1
        django.consumers[context].kill()
        self._away("consumer killed")
        django.start_consumer(context)
        return f"{context} consumer"

    def _freeze(self) -> str:
        django = self.stack.django
        context = CONTEXTS[self._turn["consumer frozen"] % len(CONTEXTS)]
        self._turn["consumer frozen"] += 1
        seconds = django.ack_wait + 3
        django.consumers[context].signal(signal.SIGSTOP)
        try:
            self.stop.wait(seconds)
        finally:
            django.consumers[context].signal(signal.SIGCONT)
        return f"{context} consumer for {seconds:g}s"

    def _deliver_again(self) -> str:
        rows = self.stack.postgres.execute(
            "SELECT id, type, kind, correlation_id, causation_id, qos, payload, "
            "extract(epoch FROM created_at)::float FROM mediator_message "
            "WHERE status = 'handled' AND type <> 'orders.OrderSagaTimeout' ORDER BY random() LIMIT %s",
            [REDELIVERED],
        )

        messages = []
        for message_id, wire, kind, correlation, causation, qos, payload, created in rows:
            context, _, name = wire.partition(".")
            headers = {
                "Catga-Message-Id": message_id,
                "Nats-Msg-Id": f"{message_id}.again",
                "Catga-Type": wire,
                "Catga-Kind": kind,
                "Catga-Correlation-Id": correlation,
                "Catga-QoS": qos,
                "Catga-Created-At": repr(created),
                **({"Catga-Causation-Id": causation} if causation else {}),
            }
            subject = f"catga.{context}.{'cmd' if kind == 'command' else 'evt'}.{name}"
            messages.append((subject, json.dumps(payload).encode(), headers))
        self.stack.broker.publish_raw(messages, timeout=60)
        kinds = Counter(row[1].partition(".")[2] for row in rows)
        return f"{len(rows)} handled messages ({', '.join(f'{k} {n}' for k, n in kinds.most_common(4))}, ...)"

    def _web(self) -> str:
        self.stack.django.web.kill()
        self._away("web server killed")
        self.stack.django.start_web()
        return "gunicorn master and workers"

    def _redis_restart(self) -> str:
        broker = self.stack.broker
        broker.stop()
        self._away("Redis restarted")
        broker.start()
        broker.wait_healthy(timeout=self.recover_timeout)
        return "SIGTERM, started again"

    def _redis_kill(self) -> str:
        broker = self.stack.broker
        broker.kill()
        self._away("Redis killed")
        broker.start()
        broker.wait_healthy(timeout=self.recover_timeout)
        return "SIGKILL, started again"

    def _nats_restart(self) -> str:
        nats = self.stack.broker
        nats.stop()
        self._away("NATS restarted")
        nats.start()
        nats.wait_healthy(timeout=self.recover_timeout)
        return f"all {len(nats.names)} nodes"

    def _postgres(self) -> str:
        self.stack.postgres.stop("immediate")
        self._away("PostgreSQL restarted")
        self.stack.postgres.start()
        return "immediate shutdown"

    def _postgres_outage(self) -> str:
        self.stack.postgres.stop("fast")
        self.stop.wait(self.db_outage)
        self.stack.postgres.start()
        return f"{self.db_outage:g}s down (ACK_WAIT {self.stack.django.ack_wait:g}s)"

    def _poison_storm(self) -> str:
        rng = random.Random(len(self.poison))
        first = len(self.poison)
        batch = []
        for i in range(POISON):
            tag = f"poison-{first + i:05d}"
            item = garbage.KINDS[i % len(garbage.KINDS)](tag, rng)
            batch.append(item if item.tag else garbage.Garbage(**{**item.__dict__, "tag": tag}))

        self.stack.broker.publish_raw([(g.subject, g.body, g.headers) for g in batch], timeout=120)
        self.poison += batch
        return f"{len(batch)} poison messages of {len(garbage.KINDS)} kinds"

    def _node(self) -> str:
        nats = self.stack.broker
        leaders = {nats.leader(stream) for stream in STREAMS}
        victim = next((n for n in nats.names if n not in leaders), nats.names[-1])
        nats.kill(victim)
        self._away("NATS node lost")
        nats.start(victim)
        nats.wait_healthy(victim, timeout=self.recover_timeout)
        return f"{victim} (leaders: {', '.join(sorted(n for n in leaders if n))})"

    def _leader(self) -> str:
        nats = self.stack.broker
        stream = STREAMS[self._turn["stream leader lost"] % len(STREAMS)]
        self._turn["stream leader lost"] += 1
        leader = nats.leader(stream)
        killed = time.monotonic()
        nats.kill(leader)
        successor = wait_until(
            lambda: (new := nats.leader(stream)) not in (None, "", leader) and new,
            timeout=60,
            what=f"a new {stream} leader after {leader}",
        )
        elected = time.monotonic() - killed
        self._away("stream leader lost")
        nats.start(leader)
        nats.wait_healthy(leader, timeout=self.recover_timeout)
        return f"{stream} leader {leader}; {successor} elected in {elected:.1f}s"
