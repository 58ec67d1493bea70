"""Which handler runs for which message, checked once at start-up.

Each context lists its handlers explicitly in its `handlers` module:

    COMMANDS = {ReserveStock: reserve_stock}
    QUERIES = {GetItems: get_items}
    EVENTS = {OrderConfirmed: [commit_reservation]}
    SENDS = [ReleaseStock]          # other contexts' commands this one sends

A command or query has exactly one handler, in the context that owns it; an event
has any number, in any context. A context may publish its own events and send its own
commands; `SENDS` lists the other contexts' commands it sends, which is what its NATS
user may publish (`manage.py nats_permissions`). Mistakes stop start-up with every
problem listed.

A handler may instead be marked where it is defined, and is then found in its context's
handlers module like a map entry (defined there, or imported into it by name):

    @handles(ReserveStock)
    def reserve_stock(command, ctx): ...

    @handles(OrderConfirmed, OrderCancelled)      # events: this context subscribes
    def forget_reservation(event, ctx): ...

The context is the one whose handlers module holds the function; `context=` states it,
and a mismatch is listed with the other problems. Maps and marks mix; the same function
named twice for a type counts once, and two handlers for a command are still refused.
"""

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from django.core.exceptions import ImproperlyConfigured

from apps.mediator.core.messages import _TYPES, Command, Event, Kind, Message, Query

Handler = Callable


def _is(value, base: type) -> bool:
    return isinstance(value, type) and issubclass(value, base)


HANDLES = "__catga_handles__"  # the mark @handles leaves on a function: (types, context or None)


def handles(*msg_types: type[Message], context: str | None = None) -> Callable[[Handler], Handler]:
    """Mark a function as the handler of `msg_types`; the registry finds it in its context's handlers module."""
    if not msg_types:
        raise TypeError("@handles() needs at least one message type")
    for msg_type in msg_types:
        if not _is(msg_type, Message) or msg_type in (Command, Query, Event):
            raise TypeError(f"@handles({msg_type!r}): not a Command, Query or Event type")

    def mark(func: Handler) -> Handler:
        if not inspect.isfunction(func):
            raise TypeError(f"@handles marks module-level functions, not {func!r}")
        types, declared = func.__dict__.get(HANDLES, ((), None))
        if context and declared and context != declared:
            raise TypeError(f"@handles on {func.__qualname__}: context {context!r} and {declared!r}")
        setattr(func, HANDLES, ((*types, *msg_types), context or declared))
        return func

    return mark


def marked_handlers(context: str, source: object) -> tuple[dict, dict, dict, list[str]]:
    """(COMMANDS, QUERIES, EVENTS) of the @handles functions in `source`'s namespace, and problems."""
    commands: dict = {}
    queries: dict = {}
    events: dict = {}
    problems: list[str] = []
    namespace = getattr(source, "__dict__", {})
    seen: set[int] = set()
    for value in list(namespace.values()):
        # Plain functions only, read from their __dict__: a lazy object in the namespace (the
        # process's `mediator`) must not be woken by a getattr while the registry is built.
        mark = value.__dict__.get(HANDLES) if inspect.isfunction(value) else None
        if mark is None or id(value) in seen:
            continue
        seen.add(id(value))
        msg_types, declared = mark
        if declared is not None and declared != context:
            problems.append(
                f"{context}: @handles(context={declared!r}) on {value.__module__}.{value.__qualname__}"
                f" is in {context!r}'s handlers module"
            )
            continue
        for msg_type in msg_types:
            if msg_type.kind is Kind.EVENT:
                events.setdefault(msg_type, []).append(value)
            else:
                target = commands if msg_type.kind is Kind.COMMAND else queries
                if msg_type in target and target[msg_type] is not value:
                    first = target[msg_type]
                    problems.append(
                        f"{msg_type.options.wire_name} has two handlers: {context}:{first.__module__}."
                        f"{first.__qualname__} and {context}:{value.__module__}.{value.__qualname__}"
                    )
                    continue
                target[msg_type] = value
    return commands, queries, events, problems


@dataclass(frozen=True)
class HandlerSpec:
    context: str
    func: Handler

    @property
    def name(self) -> str:
        return f"{self.context}:{self.func.__module__}.{self.func.__qualname__}"


def _merged(listed: Mapping, marked: Mapping) -> dict:
    """EVENTS of the map, then the marked functions it does not already name."""
    merged = {msg_type: list(funcs) for msg_type, funcs in listed.items()}
    for msg_type, funcs in marked.items():
        merged.setdefault(msg_type, []).extend(f for f in funcs if f not in merged[msg_type])
    return merged


@dataclass
class Registry:
    single: dict[type[Message], HandlerSpec] = field(default_factory=dict)
    events: dict[type[Message], list[HandlerSpec]] = field(default_factory=dict)
    contexts: tuple[str, ...] = ()
    sends: dict[str, tuple[type[Message], ...]] = field(default_factory=dict)

    @classmethod
    def from_maps(cls, maps: Mapping[str, object], *, strict: bool = True) -> "Registry":
        """Build from {context: module-or-object with COMMANDS/QUERIES/EVENTS}."""
        registry = cls(contexts=tuple(maps))
        problems: list[str] = []
        for context, source in maps.items():
            commands, queries, events, marked_problems = marked_handlers(context, source)
            problems += marked_problems
            for attr, base, marked in (("COMMANDS", Command, commands), ("QUERIES", Query, queries)):
                listed = getattr(source, attr, {})
                for msg_type, func in listed.items():
                    problems += registry._add_single(context, msg_type, func, base)
                for msg_type, func in marked.items():
                    if listed.get(msg_type) is not func:  # the same function in the map and marked: once
                        problems += registry._add_single(context, msg_type, func, base)
            for msg_type, funcs in _merged(getattr(source, "EVENTS", {}), events).items():
                if not _is(msg_type, Event):
                    problems.append(f"{context}: EVENTS key {msg_type!r} is not an Event")
                    continue
                for func in funcs:
                    registry.events.setdefault(msg_type, []).append(HandlerSpec(context, func))
            sends = tuple(getattr(source, "SENDS", ()))
            problems += [f"{context}: SENDS entry {t!r} is not a Command" for t in sends if not _is(t, Command)]
            registry.sends[context] = sends
        if strict:
            problems += registry._unhandled()
        if problems:
            raise ImproperlyConfigured("Catga handler registry:\n  " + "\n  ".join(problems))
        return registry

    @classmethod
    def from_settings(cls, contexts: Mapping[str, str]) -> "Registry":
        return cls.from_maps({name: importlib.import_module(path) for name, path in contexts.items()})

    def _add_single(self, context, msg_type, func, base) -> list[str]:
        if not _is(msg_type, base):
            return [f"{context}: {msg_type!r} is not a {base.__name__}"]
        wire_name = msg_type.options.wire_name
        if msg_type in self.single:
            other = self.single[msg_type]
            return [f"{wire_name} has two handlers: {other.name} and {context}:{func.__qualname__}"]
        owner = msg_type.options.context
        if owner != context:
            return [f"{wire_name} is owned by {owner!r} but handled in {context!r}"]
        self.single[msg_type] = HandlerSpec(context, func)
        return []

    def _unhandled(self) -> list[str]:
        problems = []
        for wire_name, msg_type in sorted(_TYPES.items()):
            if msg_type.kind is Kind.EVENT or msg_type.options.context not in self.contexts:
                continue
            if msg_type not in self.single:
                problems.append(f"{wire_name} ({msg_type.kind}) has no handler")
        return problems

    def commands_sent(self, context: str) -> list[type[Message]]:
        """Other contexts' commands `context` sends (its SENDS), for its NATS permissions."""
        return [t for t in self.sends.get(context, ()) if t.options.context != context]

    def handler_for(self, msg_type: type[Message]) -> HandlerSpec | None:
        return self.single.get(msg_type)

    def handlers_for(self, msg_type: type[Message], context: str | None = None) -> list[HandlerSpec]:
        """The handlers a process serving `context` (None: every context) runs."""
        if msg_type.kind is Kind.EVENT:
            specs = self.events.get(msg_type, [])
        else:
            spec = self.single.get(msg_type)
            specs = [spec] if spec else []
        if context is None:
            return list(specs)
        return [s for s in specs if s.context == context]

    def subscriptions(self, context: str) -> list[type[Message]]:
        """Message types a consumer of `context` must receive."""
        own = [t for t, s in self.single.items() if s.context == context and t.kind is Kind.COMMAND]
        events = [t for t, specs in self.events.items() if any(s.context == context for s in specs)]
        return own + events
