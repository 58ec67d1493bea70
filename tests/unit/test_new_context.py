"""A new bounded context needs no change to the mediator: it is found in INSTALLED_APPS.

A throwaway `shipping` app (contracts.py + handlers.py, nothing else) is written to a
temporary folder and installed the way a project adds an app (here through
CATGA_EXTRA_APPS, standing for its line in INSTALLED_APPS). A fresh process must find
it as a context, register its command and its subscription to an orders event, and
answer its query through the public API.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FILES = {
    "shipping/__init__.py": "",
    "shipping/apps.py": """
        from django.apps import AppConfig


        class ShippingConfig(AppConfig):
            name = "shipping"
    """,
    "shipping/contracts.py": """
        from apps.mediator import Command, Event, Query


        class ShipOrder(Command):
            order_id: int

            class Meta:
                context = "shipping"


        class GetQuote(Query):
            weight_kg: float

            class Meta:
                context = "shipping"


        class OrderShipped(Event):
            order_id: int

            class Meta:
                context = "shipping"
    """,
    "shipping/handlers.py": """
        from apps.orders.contracts import OrderConfirmed
        from shipping.contracts import GetQuote, OrderShipped, ShipOrder


        def ship_order(command: ShipOrder, ctx) -> None:
            ctx.mediator.publish(OrderShipped(order_id=command.order_id))


        def quote(query: GetQuote, ctx) -> float:
            return round(4.5 + 1.2 * query.weight_kg, 2)


        def on_confirmed(event: OrderConfirmed, ctx) -> None:
            ctx.mediator.send(ShipOrder(order_id=event.order_id))


        COMMANDS = {ShipOrder: ship_order}
        QUERIES = {GetQuote: quote}
        EVENTS = {OrderConfirmed: [on_confirmed]}
    """,
}

PROBE = """
import json, django
django.setup()
from apps.mediator import mediator
from apps.orders.contracts import OrderConfirmed
from shipping.contracts import GetQuote, ShipOrder

registry = mediator.registry
print(json.dumps({
    "contexts": list(registry.contexts),
    "ship_handler": registry.handler_for(ShipOrder).context,
    "confirmed_handlers": sorted(s.context for s in registry.handlers_for(OrderConfirmed, None)),
    "quote": mediator.ask(GetQuote(weight_kg=2.0)),
}))
"""


def test_a_new_context_is_discovered_from_installed_apps(tmp_path):
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "catga_site.settings",
        "DJANGO_DEBUG": "1",
        "CATGA_TRANSPORT": "memory",
        "CATGA_EXTRA_APPS": "shipping",
    }
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "shipping" in found["contexts"] and {"orders", "inventory", "payments"} <= set(found["contexts"])
    assert found["ship_handler"] == "shipping"
    assert "shipping" in found["confirmed_handlers"]
    assert found["quote"] == 6.9
