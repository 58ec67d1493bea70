"""@handles: handlers marked where they are defined fill the same registry as the maps."""

import types

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.mediator import Command, Event, Query, handles
from apps.mediator.core.registry import Registry


class Polish(Command):
    spoons: int

    class Meta:
        context = "silver"


class CountSpoons(Query):
    class Meta:
        context = "silver"


class Polished(Event):
    spoons: int

    class Meta:
        context = "silver"


class Forge(Command):
    class Meta:
        context = "smithy"


def handlers_module(name: str, **namespace) -> types.ModuleType:
    """A stand-in for apps/<name>/handlers.py with the given names in it."""
    module = types.ModuleType(f"apps.{name}.handlers")
    module.__dict__.update(namespace)
    return module


def build(**modules) -> Registry:
    return Registry.from_maps(modules)


def test_marked_handlers_are_registered_like_map_entries():
    @handles(Polish)
    def polish(command, ctx):
        return command.spoons

    @handles(CountSpoons)
    def count(query, ctx):
        return 3

    @handles(Polished)
    def log_polished(event, ctx):
        return None

    @handles(Forge)
    def forge(command, ctx):
        return None

    registry = build(
        silver=handlers_module("silver", polish=polish, count=count),
        smithy=handlers_module("smithy", forge=forge, log_polished=log_polished),
    )

    assert registry.handler_for(Polish).func is polish and registry.handler_for(Polish).context == "silver"
    assert registry.handler_for(CountSpoons).func is count
    # An event's subscribing context is the one whose handlers module holds the handler.
    assert [(s.context, s.func) for s in registry.handlers_for(Polished)] == [("smithy", log_polished)]
    assert set(registry.subscriptions("smithy")) == {Forge, Polished}
    assert registry.subscriptions("silver") == [Polish]


def test_one_function_may_handle_several_events_and_stack_marks():
    class Tarnished(Event):
        class Meta:
            context = "silver"

    @handles(Polished, Tarnished)
    @handles(Polish)
    def everything(message, ctx):
        return None

    registry = build(silver=handlers_module("silver", everything=everything, QUERIES={CountSpoons: print}))
    assert registry.handler_for(Polish).func is everything
    assert [s.func for s in registry.handlers_for(Polished)] == [everything]
    assert [s.func for s in registry.handlers_for(Tarnished)] == [everything]


def test_maps_and_marks_mix_and_the_same_function_counts_once():
    @handles(Polish)
    def polish(command, ctx):
        return None

    @handles(Polished)
    def on_polished(event, ctx):
        return None

    def count(query, ctx):
        return 0

    module = handlers_module(
        "silver",
        polish=polish,
        on_polished=on_polished,
        also_polish=polish,  # an alias is the same function, not a second handler
        COMMANDS={Polish: polish},
        QUERIES={CountSpoons: count},
        EVENTS={Polished: [on_polished]},
    )
    registry = build(silver=module, smithy=handlers_module("smithy", COMMANDS={Forge: lambda c, x: None}))
    assert registry.handler_for(Polish).func is polish
    assert registry.handler_for(CountSpoons).func is count
    assert [s.func for s in registry.handlers_for(Polished)] == [on_polished]  # not run twice


def test_two_handlers_for_a_command_stop_start_up_with_the_other_problems():
    @handles(Polish)
    def polish(command, ctx):
        return None

    @handles(Polish)
    def polish_again(command, ctx):
        return None

    @handles(Forge)  # owned by smithy, marked in silver's handlers
    def forge(command, ctx):
        return None

    def other(command, ctx):
        return None

    with pytest.raises(ImproperlyConfigured) as err:
        build(
            silver=handlers_module("silver", polish=polish, polish_again=polish_again, forge=forge),
            smithy=handlers_module("smithy", COMMANDS={}),
        )
    text = str(err.value)
    assert "silver.Polish has two handlers" in text and "polish_again" in text
    assert "smithy.Forge is owned by 'smithy' but handled in 'silver'" in text
    assert "silver.CountSpoons (query) has no handler" in text

    with pytest.raises(ImproperlyConfigured, match="silver.Polish has two handlers"):
        build(silver=handlers_module("silver", polish=polish, COMMANDS={Polish: other}, QUERIES={CountSpoons: other}))


def test_an_explicit_context_must_be_the_handlers_modules():
    @handles(Polished, context="smithy")
    def on_polished(event, ctx):
        return None

    registry = build(
        smithy=handlers_module("smithy", on_polished=on_polished, COMMANDS={Forge: on_polished}),
    )
    assert [s.context for s in registry.handlers_for(Polished)] == ["smithy"]

    with pytest.raises(ImproperlyConfigured, match="@handles\\(context='smithy'\\).* is in 'silver'"):
        build(
            silver=handlers_module(
                "silver", on_polished=on_polished, COMMANDS={Polish: print}, QUERIES={CountSpoons: print}
            )
        )


def test_marking_something_else_fails_where_it_is_written():
    with pytest.raises(TypeError, match="at least one"):
        handles()
    with pytest.raises(TypeError, match="not a Command, Query or Event"):
        handles(dict)
    with pytest.raises(TypeError, match="not a Command, Query or Event"):
        handles(Command)
    with pytest.raises(TypeError, match="module-level functions"):
        handles(Polish)(print)


def test_lazy_objects_in_the_handlers_module_are_not_woken():
    class Lazy:
        def __getattr__(self, name):
            raise AssertionError(f"woken for {name}")

    registry = build(
        silver=handlers_module("silver", mediator=Lazy(), COMMANDS={Polish: print}, QUERIES={CountSpoons: print}),
        smithy=handlers_module("smithy", COMMANDS={Forge: print}),
    )
    assert registry.handler_for(Polish).func is print
