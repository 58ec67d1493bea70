"""The one seam between the framework and a message system.

A transport is a class named by a dotted path in CATGA["TRANSPORT"] and built with the
process's dispatcher. It has two sides:

- sending (`Transport`): senders call `publish` after their transaction commits; it must
  not block a request on the network. What it could not send stays in the outbox, which
  the relay hands to `publish_blocking`.
- receiving (`Receiver`, opened by `Transport.open_receiver` in `run_consumer`): one
  `Subscription` per durable consumer, fetching `Delivery` objects that the worker
  settles with ack, retry(delay), dead(reason); touch() while a handler is still busy.

The consumer loop, the dispatcher, sagas and the admin know only these names; everything
about a broker (its client, subjects, headers, acks, lag) stays in its transport package.
"""

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

from apps.mediator.core.envelope import H_DEDUPE, Envelope


@dataclass(frozen=True)
class Outgoing:
    envelope: Envelope
    body: bytes
    # De-duplication key when it must differ from the message id (a replay).
    dedupe_id: str | None = None

    def headers(self) -> dict[str, str]:
        headers = self.envelope.to_headers()
        if self.dedupe_id:
            headers[H_DEDUPE] = self.dedupe_id
        return headers


@dataclass(frozen=True)
class StoreStats:
    """One store of the message system (a JetStream stream, a Redis stream)."""

    name: str
    messages: int
    bytes: int
    consumers: int
    dead_letters: bool = False


@dataclass(frozen=True)
class Lag:
    """What one durable consumer has in front of it, for metrics, the dashboard and catga_status."""

    stream: str
    name: str
    pending: int  # stored, not yet delivered to this consumer
    ack_pending: int  # delivered, waiting for an acknowledgement
    redelivered: int  # delivered more than once, still not acknowledged
    waiting: int = 0  # fetches waiting (how many workers are asking)


@dataclass
class Backlog:
    """A reading of the message system: its stores, its consumers' lag, and what is missing."""

    streams: list[StoreStats] = field(default_factory=list)
    consumers: list[Lag] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # stores or consumers that do not exist

    @property
    def dead_letters(self) -> int:
        return sum(s.messages for s in self.streams if s.dead_letters)

    def as_dict(self) -> dict:
        return {
            "streams": [asdict(s) for s in self.streams],
            "consumers": [asdict(c) for c in self.consumers],
            "dead_letters": self.dead_letters,
            "missing": self.missing,
        }


@runtime_checkable
class Delivery(Protocol):
    """One received message, settled exactly once by the worker."""

    headers: Mapping[str, str]
    body: bytes
    subject: str  # where it arrived (for logs and dead letters)
    attempt: int  # deliveries so far, this one included (the broker's count)

    async def ack(self) -> None: ...

    async def retry(self, delay: float) -> None:
        """Deliver again after `delay` seconds, to whichever consumer asks then."""

    async def dead(self, reason: str) -> None:
        """Store it as a dead letter with the reason and the original headers; never deliver again."""

    async def touch(self) -> None:
        """Still working on it: do not redeliver it yet (a heartbeat)."""

    async def release(self) -> None:
        """Give it back for prompt redelivery (shutdown with the handler unfinished)."""


@runtime_checkable
class Subscription(Protocol):
    """A durable consumer of one context's commands or events, shared by every replica."""

    name: str  # the durable's name, e.g. "orders_cmd"
    context: str
    # Its queue (core/routing.py); a transport without queues may leave it out ("default").
    # queue: str

    async def fetch(self, most: int, timeout: float, spawn: Callable[[list[Delivery]], None]) -> None:
        """Hand up to `most` deliveries to `spawn` as they arrive, waiting at most `timeout` for the first."""


OnceHandler = Callable[[Subscription, Delivery], Awaitable[None]]


class Receiver(abc.ABC):
    """The receiving side of a transport in one run_consumer process."""

    subscriptions: Sequence[Subscription]

    @abc.abstractmethod
    async def listen_at_most_once(self, handler: OnceHandler) -> None:
        """Call `handler` for each at-most-once message (never acknowledged nor redelivered)."""

    @abc.abstractmethod
    async def backlog(self) -> Backlog:
        """Lag of this process's subscriptions and the size of the stores."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """The connection is up (readiness)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop subscriptions, flush the last acknowledgements, close the connection."""


class Transport(abc.ABC):
    label = "the message system"  # how errors and catga_status name it

    def __init__(self, dispatcher) -> None:
        self.dispatcher = dispatcher
        self.registry = dispatcher.registry

    @abc.abstractmethod
    def publish(self, batch: Sequence[Outgoing]) -> None:
        """Hand committed messages over for delivery, without blocking on the network."""

    def publish_blocking(self, batch: Sequence[Outgoing]) -> list[str]:
        """Publish and wait for the system's acknowledgement; returns the ids it has (the relay)."""
        self.publish(batch)
        return [item.envelope.id for item in batch]

    def probe(self, timeout: float) -> list[str]:
        """Readiness: what is wrong with the connection or topology, [] when nothing."""
        return []

    def consumer_pending(self, timeout: float = 1.0) -> dict[str, int] | None:
        """Messages waiting per durable consumer for the dashboard; None when the transport has none."""
        return None

    def connect_in_background(self) -> None:  # noqa: B027 (optional hook)
        """Start connecting now (a gunicorn worker before it serves), not on first use."""

    async def backlog(self) -> Backlog:
        """A reading of every consumer's lag and the stores (catga_status)."""
        raise NotImplementedError(f"{type(self).__name__} has no broker to read")

    async def open_receiver(self, contexts: Sequence[str], name: str) -> Receiver:
        """Connect, provision the topology and bind the contexts' durable consumers (run_consumer)."""
        raise NotImplementedError(f"{type(self).__name__} has no consumers: it delivers in the sending process")

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections; called at process exit."""
