"""What JetStream holds for the app: stream sizes and each durable consumer's lag.

One snapshot feeds both the consumers' gauges (refreshed by run_consumer) and
`manage.py catga_status`. It only reads (STREAM.INFO / CONSUMER.INFO).
"""

from dataclasses import asdict, dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from apps.mediator.transports.nats import topology


@dataclass(frozen=True)
class StreamStats:
    name: str
    messages: int
    bytes: int
    consumers: int
    dead_letters: bool = False


@dataclass(frozen=True)
class ConsumerStats:
    stream: str
    name: str
    pending: int  # in the stream, not yet delivered to this consumer
    ack_pending: int  # delivered, waiting for an ack
    redelivered: int  # delivered more than once, still not acked
    waiting: int  # pull requests waiting (how many workers are asking)


@dataclass
class Snapshot:
    streams: list[StreamStats] = field(default_factory=list)
    consumers: list[ConsumerStats] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # streams or consumers that do not exist

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


def stream_names() -> list[str]:
    return [topology.stream_name(kind) for kind in ("CMD", "EVT", "DLQ")]


async def snapshot(js: JetStreamContext, *, durables=None) -> Snapshot:
    """Streams of the app and consumers: `durables` (Durable objects) or every consumer of each stream.

    Each request has nats-py's own timeout; callers bound the whole with asyncio.wait_for.
    """
    result = Snapshot()
    dlq = topology.stream_name("DLQ")
    for name in stream_names():
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            result.missing.append(name)
            continue
        state = info.state
        result.streams.append(
            StreamStats(name, state.messages, state.bytes, state.consumer_count or 0, dead_letters=name == dlq)
        )
    present = {s.name for s in result.streams}
    if durables is None:
        infos = []
        for stream in present:
            infos += await js.consumers_info(stream)
    else:
        infos = []
        for durable in durables:
            if durable.stream not in present:
                continue
            try:
                infos.append(await js.consumer_info(durable.stream, durable.name))
            except NotFoundError:
                result.missing.append(f"{durable.stream}/{durable.name}")
    for info in sorted(infos, key=lambda i: (i.stream_name, i.name)):
        result.consumers.append(
            ConsumerStats(
                stream=info.stream_name,
                name=info.name,
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
                waiting=info.num_waiting or 0,
            )
        )
    return result
