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
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        assert time.monotonic() < deadline, "the forked child hung publishing"
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    stream = js_call(nats_settings.CATGA["NATS_URL"], lambda nc, js: js.stream_info("CATGA_CMD"))
    assert stream.state.messages == 2
