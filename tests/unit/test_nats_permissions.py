"""The per-role NATS permissions generated from the registry (manage.py nats_permissions).

tests/integration/test_nats_permissions.py runs them on a real nats-server; these pin
what each role may do, so a change to the registry that widens a role shows here.
"""

import json

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from apps.inventory.contracts import ReserveStock, StockReserved
from apps.mediator.core import roles
from apps.mediator.core.messages import _TYPES, Kind, subject_for
from apps.mediator.core.registry import Registry
from apps.mediator.runtime import get_registry
from apps.mediator.transports.nats import permissions
from apps.orders.contracts import OrderPlaced
from apps.payments.contracts import ChargePayment, PaymentCaptured, RefundPayment


@pytest.fixture
def registry():
    return get_registry()


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("catga.payments.evt.>", "catga.payments.evt.PaymentCaptured", True),
        ("catga.payments.evt.>", "catga.payments.evt", False),
        ("catga.*.cmd.X", "catga.orders.cmd.X", True),
        ("catga.*.cmd.X", "catga.orders.cmd.X.Y", False),
        ("$JS.API.STREAM.INFO.*", "$JS.API.STREAM.INFO.CATGA_CMD", True),
        ("catga.orders.cmd.>", "catga.orders.evt.OrderPlaced", False),
        (">", "anything.at.all", True),
    ],
)
def test_subjects_match_as_nats_matches_them(pattern, subject, expected):
    assert permissions.matches(pattern, subject) is expected


def test_payments_publishes_its_own_events_and_nothing_of_the_others(registry):
    def may(subject):
        return permissions.may_publish(registry, "payments", subject)

    assert may(subject_for(PaymentCaptured))
    assert not may(subject_for(OrderPlaced))
    assert not may(subject_for(StockReserved))
    assert not may(subject_for(ReserveStock))
    assert not may("$JS.API.CONSUMER.MSG.NEXT.CATGA_CMD.orders_cmd")  # another context's deliveries
    assert not may("$JS.ACK.CATGA_CMD.orders_cmd.1.2.3.4.5")
    assert not may("$JS.API.STREAM.DELETE.CATGA_CMD")
    assert may("$JS.API.CONSUMER.MSG.NEXT.CATGA_CMD.payments_cmd")


@pytest.mark.parametrize("role", [roles.WEB, "orders", "inventory"])
def test_no_role_but_payments_can_announce_a_capture(registry, role):
    assert not permissions.may_publish(registry, role, subject_for(PaymentCaptured))


def test_the_web_and_orders_send_what_the_saga_sends(registry):
    for role in (roles.WEB, "orders"):
        for command in (ReserveStock, ChargePayment, RefundPayment):
            assert permissions.may_publish(registry, role, subject_for(command)), (role, command)
        assert permissions.may_publish(registry, role, subject_for(OrderPlaced))


def test_the_web_consumes_nothing(registry):
    assert permissions.subscribe_subjects(registry, roles.WEB) == ["_INBOX.>"]
    assert not any(".MSG.NEXT." in s or s.startswith("$JS.ACK") for s in permissions.publish_subjects(registry, "web"))


def test_every_message_type_has_a_role_that_may_relay_it(registry):
    """What a process may not publish waits in the outbox for a role that may: one must exist."""
    publishable = set()
    for role in registry.contexts:
        publishable |= roles.publishable_names(registry, role)
    owned = {
        name
        for name, t in _TYPES.items()
        if t.options.context in registry.contexts and t.kind in (Kind.COMMAND, Kind.EVENT)
    }
    assert owned <= publishable


def test_no_role_is_no_limit_and_an_unknown_role_is_refused(registry, settings):
    assert roles.publishable_names(registry, "") is None
    assert roles.publishable_names(registry, roles.ADMIN) is None
    with pytest.raises(ValueError, match="unknown role 'shipping'"):
        roles.publishable_names(registry, "shipping")
    settings.CATGA = {**settings.CATGA, "WEB_CONTEXTS": ["nowhere"]}
    with pytest.raises(ValueError, match="nowhere"):
        roles.publishable_names(registry, roles.WEB)


def test_sends_must_list_commands():
    class Handlers:
        COMMANDS = {}
        SENDS = [StockReserved]

    with pytest.raises(ImproperlyConfigured, match="SENDS entry .* is not a Command"):
        Registry.from_maps({"orders": Handlers}, strict=False)


def test_the_command_prints_the_server_configuration(registry, capsys):
    call_command("nats_permissions")
    conf = capsys.readouterr().out
    assert f"max_payload: {permissions.max_payload()}" in conf
    for role in roles.roles(registry):
        assert f"password: ${permissions.password_variable(role)}" in conf
    call_command("nats_permissions", "--format", "json")
    users = {u["user"]: u for u in json.loads(capsys.readouterr().out)["users"]}
    assert users["payments"]["publish"][:2] == ["catga.payments.cmd.>", "catga.payments.evt.>"]
    assert "password" not in users["payments"]
