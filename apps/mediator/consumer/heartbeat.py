"""The worker's heartbeat: its row in the workers view (admin "Workers", `manage.py catga_inspect`).

Every CATGA["WORKER_HEARTBEAT"] seconds the process upserts who it is (host, pid,
contexts, concurrency), how much it handled, how many messages it holds and which, and
its throughput over the last interval, and reads back whether an operator asked it to
drain (stop fetching, finish what it holds, stay up until resumed). The database work runs
in a thread; a database outage only skips a beat. A clean shutdown deletes the row.
"""

import asyncio
import datetime as dt
import logging
import os
import socket
import time

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.envelope import H_ID, H_TYPE
from apps.mediator.core.ids import new_id
from apps.mediator.storage import outage, workers

logger = logging.getLogger("catga.worker")


class Heartbeat:
    def __init__(self, worker, run_sync):
        """`run_sync(func, *args)`: awaitable running `func` in a thread with connection hygiene."""
        self.worker = worker
        self.run_sync = run_sync
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.id = f"{self.host}:{self.pid}:{new_id()}"
        self.started_at = dt.datetime.now(dt.UTC)
        self._at, self._handled = time.monotonic(), 0

    def fields(self) -> dict:
        state = self.worker.state
        now = time.monotonic()
        throughput = (state.handled - self._handled) / max(now - self._at, 1e-6)
        self._at, self._handled = now, state.handled
        handling = [
            {"type": d.headers.get(H_TYPE, ""), "id": d.headers.get(H_ID, "")}
            for d in list(self.worker._messages.values())[: workers.HANDLING_MAX]
        ]
        return {
            "host": self.host,
            "pid": self.pid,
            "contexts": list(self.worker.contexts),
            "concurrency": self.worker.concurrency,
            "interval": float(catga_settings.WORKER_HEARTBEAT),
            "started_at": self.started_at,
            "handled": state.handled,
            "in_flight": state.in_flight,
            "handling": handling,
            "throughput": throughput,
            "queues": list(self.worker.queues or ()),
            "paused": self.worker.state.paused,
        }

    async def loop(self) -> None:
        interval = float(catga_settings.WORKER_HEARTBEAT)
        if interval <= 0:
            return  # 0: no heartbeat rows
        while True:
            try:
                drain = await self.run_sync(workers.beat, self.id, self.fields())
                self.worker.pause(drain)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: skip this beat, try at the next
                if outage.unavailable(exc):
                    self.worker.state.database = False
                logger.debug("heartbeat skipped: %r", exc)
            await asyncio.sleep(interval)

    async def forget(self) -> None:
        try:
            # Bounded, so a database away at shutdown does not hold the exit (the row is pruned later).
            await asyncio.wait_for(self.run_sync(workers.forget, self.id), timeout=5.0)
        except Exception as exc:
            logger.warning("could not remove this worker's heartbeat row: %r", exc)
