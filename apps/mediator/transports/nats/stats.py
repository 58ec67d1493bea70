"""What JetStream holds for the app: stream sizes and each durable consumer's lag.

One snapshot feeds both the consumers' gauges (refreshed by run_consumer) and
`manage.py catga_status`. It only reads (STREAM.INFO / CONSUMER.INFO).
"""

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from apps.mediator.core.ports import Backlog, Lag, StoreStats
from apps.mediator.transports.nats import topology


def stream_names() -> list[str]:
    return [topology.stream_name(kind) for kind in ("CMD", "EVT", "DLQ")]


async def snapshot(js: JetStreamContext, *, durables=None) -> Backlog:
    """Streams of the app and consumers: `durables` (Durable objects) or every consumer of each stream.

    Each request has nats-py's own timeout; callers bound the whole with asyncio.wait_for.
    """
    result = Backlog()
    dlq = topology.stream_name("DLQ")
    for name in stream_names():
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            result.missing.append(name)
            continue
        state = info.state
        result.streams.append(
            StoreStats(name, state.messages, state.bytes, state.consumer_count or 0, dead_letters=name == dlq)
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
            Lag(
                stream=info.stream_name,
                name=info.name,
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
                waiting=info.num_waiting or 0,
            )
        )
    return result
