"""The live workers view: each run_consumer process is listed live while it beats,
shown as gone soon after it is killed, and removed when it stops cleanly."""

import io
import json
import signal

from django.core.management import call_command

from apps.mediator.servers.ports import wait_until

BEAT = 0.5  # seconds between heartbeats: a killed worker is gone after 3 of them


def inspect() -> dict[int, dict]:
    out = io.StringIO()
    call_command("catga_inspect", "--json", stdout=out)
    return {row["pid"]: row for row in json.loads(out.getvalue())["workers"]}


def test_workers_are_listed_live_then_gone_when_killed_and_removed_when_stopped(workers):
    inventory = workers.start("inventory", CATGA_WORKER_HEARTBEAT=str(BEAT))
    payments = workers.start("payments", CATGA_WORKER_HEARTBEAT=str(BEAT))

    listed = wait_until(
        lambda: (rows := inspect()) and all(rows.get(p.pid, {}).get("live") for p in (inventory, payments)) and rows,
        timeout=15,
        what="both workers listed live",
    )
    row = listed[inventory.pid]
    assert row["contexts"] == ["inventory"]
    assert row["concurrency"] >= 1 and row["host"]
    assert listed[payments.pid]["contexts"] == ["payments"]

    inventory.kill()  # SIGKILL: no clean shutdown, its row stays behind
    inventory.wait()
    rows = wait_until(
        lambda: (rows := inspect()) and not rows.get(inventory.pid, {}).get("live") and rows,
        timeout=3 * BEAT + 3,
        what="the killed worker shown as gone",
    )
    assert rows[payments.pid]["live"]

    payments.send_signal(signal.SIGTERM)
    assert payments.wait(timeout=30) == 0
    assert payments.pid not in inspect()
