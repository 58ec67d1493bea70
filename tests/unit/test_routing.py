"""Per-type queues (issue 18): the durable consumers a route makes, and what is refused."""

from apps.mediator import runtime
from apps.mediator.core import routing
from apps.mediator.transports.nats import permissions, topology


def durables_of(context: str) -> dict[str, tuple[str, ...]]:
    return {d.name: d.subjects for d in topology.durables(runtime.get_registry(), [context])}


def test_without_routes_the_durables_are_the_contexts_own(settings):
    assert durables_of("payments") == {"payments_cmd": ("catga.payments.cmd.>",)}
    assert set(durables_of("inventory")) == {"inventory_cmd", "inventory_evt"}


def test_a_routed_command_gets_a_durable_of_its_own_and_the_default_keeps_the_rest(settings):
    settings.CATGA = {**settings.CATGA, "ROUTES": {"payments.ChargePayment": "slow"}}
    found = durables_of("payments")
    assert found["payments_cmd_slow"] == ("catga.payments.cmd.ChargePayment",)
    # The whole space stays on the default, so a command of no known type still settles there.
    assert found["payments_cmd"] == ("catga.payments.cmd.>",)
    assert routing.queue_for("payments.ChargePayment") == "slow"
    assert routing.queue_for("payments.RefundPayment") == routing.DEFAULT


def test_a_routed_event_moves_out_of_the_default_event_durable(settings):
    registry = runtime.get_registry()
    event = next(t for t in registry.subscriptions("inventory") if t.kind.value == "event")
    settings.CATGA = {**settings.CATGA, "ROUTES": {event.options.wire_name: "bulk"}}
    found = durables_of("inventory")
    assert found["inventory_evt_bulk"] == (f"catga.{event.options.context}.evt.{event.options.name}",)
    assert all(event.options.name not in s for s in found.get("inventory_evt", ()))


def test_the_queue_durable_is_in_the_role_permissions(settings):
    settings.CATGA = {**settings.CATGA, "ROUTES": {"payments.ChargePayment": "slow"}}
    subjects = permissions.publish_subjects(runtime.get_registry(), "payments")
    assert "$JS.API.CONSUMER.MSG.NEXT.CATGA_CMD.payments_cmd_slow" in subjects
    assert "$JS.ACK.CATGA_CMD.payments_cmd_slow.>" in subjects


def test_bad_routes_are_named(settings):
    settings.CATGA = {**settings.CATGA, "ROUTES": {"payments.Nope": "slow", "payments.ChargePayment": "Not OK"}}
    problems = routing.check()
    assert any("'payments.Nope']: no such message type" in p for p in problems)
    assert any("queue 'Not OK' must match" in p for p in problems)
