"""The mediator's building blocks, with throwaway message types of a 'lab' context."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.mediator.core import codec
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.errors import PermanentError, UndecodableMessage, ValidationFailed
from apps.mediator.core.ids import id_timestamp_ms, new_id
from apps.mediator.core.messages import Command, Event, Kind, QoS, subject_for
from apps.mediator.core.pipeline import HandlerContext, Pipeline
from apps.mediator.core.registry import HandlerSpec, Registry


class Brew(Command):
    cups: int

    class Meta:
        context = "lab"
        qos = QoS.EXACTLY_ONCE

    def validate(self):
        if self.cups > 12:
            raise ValidationFailed({"cups": ["A pot holds 12 cups at most."]})


class Brewed(Event):
    cups: int

    class Meta:
        context = "lab"


def noop(message, ctx):
    return None


def test_ids_are_unique_and_sort_by_creation_time():
    ids = [new_id(now_ms=1_700_000_000_000 + i) for i in range(1000)]
    assert ids == sorted(ids)
    assert len(set(new_id() for _ in range(10_000))) == 10_000
    assert id_timestamp_ms(ids[5]) == 1_700_000_000_005


def test_ids_drawn_after_a_fork_differ_from_the_parents():
    """Random bytes are buffered per process: a forked child must not replay the parent's."""
    import os

    new_id()  # the parent's buffer is filled
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, "".join(new_id(now_ms=1) for _ in range(3)).encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(read, 200).decode()
    os.close(read)
    os.close(write)
    assert from_child != "".join(new_id(now_ms=1) for _ in range(3))


def test_message_types_have_a_stable_wire_name_subject_and_options():
    assert Brew.options.wire_name == "lab.Brew"
    assert Brew.kind is Kind.COMMAND and Brewed.kind is Kind.EVENT
    assert subject_for(Brew) == "catga.lab.cmd.Brew"
    assert subject_for(Brewed) == "catga.lab.evt.Brewed"
    assert Brew.options.qos is QoS.EXACTLY_ONCE
    with pytest.raises(AttributeError):
        Brew(cups=1).cups = 2  # immutable


def test_decode_validates_types_and_rules_and_says_why():
    assert codec.decode("lab.Brew", b'{"cups": 3}') == Brew(cups=3)
    with pytest.raises(UndecodableMessage, match="schema violation.*cups"):
        codec.decode("lab.Brew", b'{"cups": "three"}')
    with pytest.raises(UndecodableMessage, match="undecodable body"):
        codec.decode("lab.Brew", b"\x00garbage")
    with pytest.raises(UndecodableMessage, match="unknown message type 'lab.Nope'"):
        codec.decode("lab.Nope", b"{}")
    with pytest.raises(UndecodableMessage, match="schema violation"):
        codec.decode("lab.Brew", b'{"cups": 1, "sugar": true}')
    with pytest.raises(ValidationFailed):
        codec.decode("lab.Brew", b'{"cups": 20}')


def test_envelope_round_trips_through_headers_and_carries_the_conversation():
    root = Envelope.for_message(Brew(cups=1), qos=QoS.EXACTLY_ONCE, traceparent="00-abc-def-01")
    child = Envelope.for_message(Brewed(cups=1), qos=QoS.AT_LEAST_ONCE, cause=root)

    assert child.correlation_id == root.id and child.causation_id == root.id
    assert Envelope.from_headers(child.to_headers()) == child
    assert Envelope.from_headers(root.to_headers()) == root
    with pytest.raises(UndecodableMessage, match="missing header"):
        Envelope.from_headers({"Catga-Type": "lab.Brew"})


def test_registry_refuses_a_command_with_two_handlers_or_none():
    one = SimpleNamespace(COMMANDS={Brew: noop})
    assert Registry.from_maps({"lab": one}).handler_for(Brew).func is noop

    with pytest.raises(ImproperlyConfigured, match="lab.Brew has two handlers"):
        Registry.from_maps({"lab": one, "lab2": SimpleNamespace(COMMANDS={Brew: noop})}, strict=False)
    with pytest.raises(ImproperlyConfigured, match=r"lab.Brew \(command\) has no handler"):
        Registry.from_maps({"lab": SimpleNamespace(EVENTS={Brewed: [noop]})})
    with pytest.raises(ImproperlyConfigured, match="owned by 'lab' but handled in 'other'"):
        Registry.from_maps({"other": one}, strict=False)


def test_events_reach_every_handler_of_the_consuming_context_only():
    def other(message, ctx):
        return None

    registry = Registry.from_maps(
        {
            "lab": SimpleNamespace(COMMANDS={Brew: noop}, EVENTS={Brewed: [noop]}),
            "shop": SimpleNamespace(EVENTS={Brewed: [other]}),
        }
    )
    assert [s.func for s in registry.handlers_for(Brewed)] == [noop, other]
    assert [s.func for s in registry.handlers_for(Brewed, "shop")] == [other]
    assert registry.subscriptions("lab") == [Brew, Brewed]


def test_behaviors_wrap_the_handler_in_configured_order():
    calls = []

    def behavior(name):
        def wrap(message, ctx, call_next):
            calls.append(f"{name}>")
            result = call_next(message, ctx)
            calls.append(f"<{name}")
            return result

        return wrap

    def handler(message, ctx):
        calls.append("handler")
        return message.cups * 2

    pipeline = Pipeline([behavior("outer"), behavior("inner")])
    envelope = Envelope.for_message(Brew(cups=2), qos=QoS.AT_LEAST_ONCE)
    assert pipeline.run(Brew(cups=2), HandlerContext(envelope, HandlerSpec("lab", handler))) == 4
    assert calls == ["outer>", "inner>", "handler", "<inner", "<outer"]


def test_validation_behavior_rejects_a_bad_locally_built_message():
    from apps.mediator.core.behaviors import ValidationBehavior

    envelope = Envelope.for_message(Brew(cups=2), qos=QoS.AT_LEAST_ONCE)
    pipeline = Pipeline([ValidationBehavior()])
    with pytest.raises(ValidationFailed):
        pipeline.run(Brew(cups=13), HandlerContext(envelope, HandlerSpec("lab", noop)))
    assert issubclass(ValidationFailed, PermanentError)


def test_production_settings_without_a_secret_key_refuse_to_start(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "0", "CATGA_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr

    env["DJANGO_SECRET_KEY"] = "x" * 50
    ok = subprocess.run([sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
