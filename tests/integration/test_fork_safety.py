"""Publishing keeps working in a process forked after the publisher started (gunicorn --preload)."""

import os
import time

import msgspec
import pytest

from apps.inventory.contracts import ReleaseStock
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import QoS
from apps.mediator.core.ports import Outgoing
from apps.mediator.runtime import get_mediator
from tests.integration.helpers import js_call

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def outgoing(order_id: str) -> Outgoing:
    message = ReleaseStock(order_id=order_id)
    return Outgoing(Envelope.for_message(message, qos=QoS.AT_LEAST_ONCE), msgspec.json.encode(message))


def child_exit_code(pid: int, hung: str, timeout: float = 30) -> int:
    """Wait (polling, with a deadline) for a forked child's exit; fails with `hung` if it never ends."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, hung
        time.sleep(0.05)


def test_a_forked_child_gets_its_own_publisher_and_connection(nats_settings):
    transport = get_mediator().transport
    parent_item = outgoing("before-fork")
    assert transport.publish_blocking([parent_item]) == [parent_item.envelope.id]
    parent_loop = transport._loop

    pid = os.fork()
    if pid == 0:  # the child: what a gunicorn worker is
        code = 1
        try:
            child_item = outgoing("after-fork")
            acked = transport.publish_blocking([child_item], timeout=15)
            code = 0 if acked == [child_item.envelope.id] and transport._loop is not parent_loop else 2
        finally:
            os._exit(code)
    assert child_exit_code(pid, "the forked child hung publishing") == 0
    stream = js_call(nats_settings.CATGA["NATS_URL"], lambda nc, js: js.stream_info("CATGA_CMD"))
    assert stream.state.messages == 2


def test_a_child_forked_while_a_mark_is_on_its_way_still_marks_its_own(nats_settings):
    """The parent's mark task (MARK_DELAY) and marking thread are not the child's: inherited,
    they would hold back every mark of the child, whose rows the relay would then re-send."""
    transport = get_mediator().transport
    transport.publish([outgoing("parent-first")])
    # The parent's marking thread exists once its first mark ran (against no row: it only logs).
    deadline = time.monotonic() + 10
    while transport._marking is not None or transport._to_mark:
        assert time.monotonic() < deadline, "the parent's first mark never ran"
        time.sleep(0.05)
    transport.publish([outgoing("parent-second")])
    while transport._marking is None:  # its mark is now waiting out MARK_DELAY
        assert time.monotonic() < deadline, "the parent's second publish was never acked"
        time.sleep(0.01)

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            transport.publish([outgoing("child")])
            limit = time.monotonic() + 10
            while transport._marking is None:  # acked: its mark is on its way
                if time.monotonic() > limit:
                    os._exit(2)
                time.sleep(0.01)
            while transport._marking is not None or transport._to_mark:
                if time.monotonic() > limit:
                    os._exit(3)  # the child's mark never ran
                time.sleep(0.05)
            code = 0
        finally:
            os._exit(code)
    assert child_exit_code(pid, "the forked child hung") == 0
