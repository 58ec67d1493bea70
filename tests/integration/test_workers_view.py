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


def test_a_drained_worker_stops_fetching_stays_up_and_resumes(workers):
    from django.db import transaction

    from apps.inventory.contracts import ReleaseStock
    from apps.mediator import runtime
    from apps.mediator.models import Message
    from tests.integration.helpers import js_call

    proc = workers.start("inventory", CATGA_WORKER_HEARTBEAT=str(BEAT))
    row = wait_until(lambda: inspect().get(proc.pid), timeout=15, what="the worker listed")
    out = io.StringIO()
    call_command("catga_inspect", "--drain", f"{row['host']}:{proc.pid}", stdout=out)
    assert "1 worker(s)" in out.getvalue()
    wait_until(lambda: inspect()[proc.pid]["paused"], timeout=3 * BEAT + 5, what="the worker drained")

    with transaction.atomic():
        ids = [runtime.get_mediator().send(ReleaseStock(order_id=f"drain-{i}")).message_id for i in range(10)]
    messages = Message.objects.filter(pk__in=ids)

    async def waiting(nc, js):
        info = await js.consumer_info("CATGA_CMD", "inventory_cmd")
        return info.num_pending, info.num_ack_pending

    # Nobody fetched them: all ten wait in the stream, none is held, the worker is still up.
    wait_until(lambda: js_call(workers.nats_url, waiting) == (10, 0), timeout=15, what="ten waiting")
    assert proc.poll() is None and inspect()[proc.pid]["live"]
    assert not messages.filter(status=Message.Status.HANDLED).exists()

    call_command("catga_inspect", "--resume", f"{row['host']}:{proc.pid}", stdout=io.StringIO())
    wait_until(lambda: messages.filter(status=Message.Status.HANDLED).count() == 10, timeout=30, what="handled")
    wait_until(lambda: not inspect()[proc.pid]["paused"], timeout=3 * BEAT + 5, what="reported fetching again")
