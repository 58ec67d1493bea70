"""The transport's own limit: raw nats-py, no Django, no mediator.

    python -m bench.raw_nats setup   --url URL
    python -m bench.raw_nats consume --url URL --count N
    python -m bench.raw_nats produce --url URL --count N

One process publishes N messages pipelined (publish_async, up to 4000 acks
outstanding, with Nats-Msg-Id like the mediator's publisher); another pulls them
through a durable pull consumer with explicit acks (fetch batches of 256, one ack
per message), both at once. The stream and consumer settings are the mediator's
(file storage, duplicate window, ack wait, max ack pending), and the body is the
size of a small command.
"""

import argparse
import asyncio
import json
import time

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

STREAM, SUBJECT, DURABLE = "RAW", "raw.bench.cmd.DoNothing", "raw_cmd"
BODY = b'{"n":12345}'
FETCH = 256


async def setup(url: str) -> dict:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=STREAM, subjects=["raw.>"], storage=StorageType.FILE, duplicate_window=120, max_age=7 * 24 * 3600
        )
    )
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_deliver=-1,
            max_ack_pending=1000,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject="raw.>",
        ),
    )
    await nc.close()
    return {"ok": True}


async def produce(url: str, count: int) -> dict:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    start = time.time()
    for i in range(count):
        await js.publish_async(SUBJECT, BODY, headers={"Nats-Msg-Id": f"raw-{i}"})
    await js.publish_async_completed()
    end = time.time()
    await nc.close()
    return {"start": start, "end": end, "count": count}


async def consume(url: str, count: int) -> dict:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=DURABLE, stream=STREAM)
    print(json.dumps({"ready": True}), flush=True)
    done, first = 0, None
    while done < count:
        try:
            msgs = await sub.fetch(FETCH, timeout=0.05)
        except (TimeoutError, NatsTimeoutError):
            continue
        first = first or time.time()
        for msg in msgs:
            await msg.ack()
        done += len(msgs)
    await nc.flush()
    end = time.time()
    await nc.close()
    return {"first": first, "end": end, "count": done}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["setup", "produce", "consume"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    if args.role == "setup":
        result = asyncio.run(setup(args.url))
    elif args.role == "produce":
        result = asyncio.run(produce(args.url, args.count))
    else:
        result = asyncio.run(consume(args.url, args.count))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
