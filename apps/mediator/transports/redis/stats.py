"""What Redis holds for the app: stream lengths and each consumer group's lag.

One snapshot feeds the consumers' gauges, the dashboard and `manage.py catga_status`. It
only reads (XINFO GROUPS, XLEN, ZCARD). `pending` is the group's lag (entries not yet
delivered to it); Redis 6.2 has no lag field, so there it is counted with a bounded XRANGE.
`redelivered` is the stream's retry set: entries waiting for their backoff to end.
"""

from redis.exceptions import ResponseError

from apps.mediator.core.ports import Backlog, Lag, StoreStats
from apps.mediator.transports.redis import topology

LAG_SCAN = 10_000  # most entries counted for the lag on a Redis without XINFO's lag


def _groups_of(durables) -> dict[str, list[str]]:
    streams: dict[str, list[str]] = {}
    for durable in durables:
        for stream in durable.streams:
            streams.setdefault(stream, []).append(durable.name)
    return streams


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


def _lag(info: dict, count_after) -> int:
    lag = info.get("lag")
    if lag is not None:
        return int(lag)
    return count_after(_decode(info.get("last-delivered-id")) or "0-0")


def _build(result: Backlog, stream: str, wanted: list[str], length: int, infos, retrying: int, count_after) -> None:
    by_name = {_decode(info["name"]): info for info in infos}
    result.streams.append(StoreStats(stream, length, 0, len(by_name)))
    for name in wanted:
        info = by_name.get(name)
        if info is None:
            result.missing.append(f"{stream}/{name}")
            continue
        result.consumers.append(
            Lag(
                stream=stream,
                name=name,
                pending=_lag(info, count_after),
                ack_pending=int(info.get("pending", 0)),
                redelivered=retrying,
            )
        )


def _dlq_keys(durables) -> list[str]:
    return sorted({topology.dlq_key(s) for d in durables for s in d.streams})


async def snapshot(client, durables) -> Backlog:
    result = Backlog()
    for stream, wanted in sorted(_groups_of(durables).items()):
        try:
            infos = await client.xinfo_groups(stream)
        except ResponseError:  # no such key: Redis lost it, or nothing created it yet
            result.missing.append(stream)
            continue
        length = await client.xlen(stream)
        retrying = await client.zcard(topology.retry_key(stream))
        after = {}
        for info in infos:
            if info.get("lag") is None:
                last = _decode(info.get("last-delivered-id")) or "0-0"
                after[last] = len(await client.xrange(stream, f"({last}", "+", count=LAG_SCAN))
        _build(result, stream, wanted, length, infos, retrying, after.get)
    for key in _dlq_keys(durables):
        result.streams.append(StoreStats(key, await client.xlen(key), 0, 0, dead_letters=True))
    return result


def snapshot_sync(client, durables) -> Backlog:
    result = Backlog()
    for stream, wanted in sorted(_groups_of(durables).items()):
        try:
            infos = client.xinfo_groups(stream)
        except ResponseError:
            result.missing.append(stream)
            continue

        def count_after(last, stream=stream):
            return len(client.xrange(stream, f"({last}", "+", count=LAG_SCAN))

        _build(
            result, stream, wanted, client.xlen(stream), infos, client.zcard(topology.retry_key(stream)), count_after
        )
    for key in _dlq_keys(durables):
        result.streams.append(StoreStats(key, client.xlen(key), 0, 0, dead_letters=True))
    return result
