"""Per-type queues (Celery's task_routes): slow types get a durable consumer of their own.

A type names its queue with `Meta.queue = "slow"`, or CATGA["ROUTES"] = {"payments.ChargePayment":
"slow"} does (and wins). Each (context, kind, queue) is one durable consumer, named like the
default one plus the queue: `payments_cmd_slow`. `run_consumer --queue slow` consumes only
that queue; without --queue a worker consumes every queue of its contexts (one process on a
laptop still handles everything).

A context's default command consumer keeps its whole subject space (`catga.<context>.cmd.>`),
so a command of no known type still reaches a worker and is dead-lettered; it acknowledges
a routed type unhandled — that type's own queue handles it.
"""

import re

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.messages import message_type

DEFAULT = "default"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")  # becomes part of a durable's name


def queue_for(wire_name: str) -> str:
    queue = catga_settings.ROUTES.get(wire_name)
    if queue is None:
        cls = message_type(wire_name)
        queue = getattr(cls.options, "queue", None) if cls is not None else None
    return queue or DEFAULT


def durable_name(context: str, kind: str, queue: str) -> str:
    """`orders_cmd`, `orders_evt`, and `payments_cmd_slow` for a queue of its own."""
    base = f"{context}_{kind}"
    return base if queue == DEFAULT else f"{base}_{queue}"


def check() -> list[str]:
    """What is wrong with the routes (run_consumer refuses to start on any)."""
    problems = []
    for wire_name, queue in catga_settings.ROUTES.items():
        if message_type(wire_name) is None:
            problems.append(f'CATGA["ROUTES"][{wire_name!r}]: no such message type')
        if not isinstance(queue, str) or not NAME.match(queue):
            problems.append(f'CATGA["ROUTES"][{wire_name!r}]: queue {queue!r} must match {NAME.pattern}')
    return problems
