"""The peer baseline: Celery with the machine's Redis, a no-op task and a three-task chain.

    celery -A bench.celery_app worker --pool prefork --concurrency 2 --without-gossip --without-mingle
    python -m bench.celery_app noop --count N      # enqueue N no-ops, wait until all ran
    python -m bench.celery_app chain3 --count N    # N chains of three no-ops, wait until all finished

Celery's defaults otherwise (prefork, prefetch multiplier 4, acks on receipt, no result
backend needed). Completion is seen through one Redis counter that only the last task of
a run (or of each chain) increments, so the measured work is Celery's, not ours.
"""

import argparse
import json
import os
import time

from celery import Celery, chain

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/15")
app = Celery("bench", broker=BROKER)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
DONE_KEY = "catga-bench:celery:done"


_client = None


def _redis():
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(BROKER)
    return _client


@app.task(name="bench.noop")
def noop(mark: bool = False) -> None:
    if mark:
        _redis().incr(DONE_KEY)


def wait_done(target: int, timeout: float) -> float:
    client = _redis()
    deadline = time.monotonic() + timeout
    while int(client.get(DONE_KEY) or 0) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"celery: {int(client.get(DONE_KEY) or 0)} of {target} finished")
        time.sleep(0.005)
    return time.time()


def run(kind: str, count: int, timeout: float) -> dict:
    client = _redis()
    client.delete(DONE_KEY)
    noop.delay()  # connect before the clock starts
    start = time.time()
    if kind == "noop":
        for _ in range(count - 1):
            noop.delay()
        noop.delay(mark=True)
        end = wait_done(1, timeout)
    else:
        for _ in range(count):
            chain(noop.si(), noop.si(), noop.si(mark=True)).delay()
        end = wait_done(count, timeout)
    return {"start": start, "end": end, "count": count}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["noop", "chain3", "ping"])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    if args.kind == "ping":
        print(json.dumps({"ok": bool(_redis().ping())}))
        return
    print(json.dumps(run(args.kind, args.count, args.timeout)), flush=True)


if __name__ == "__main__":
    main()
