"""Message base types: Command, Query and Event.

A message is an immutable msgspec Struct. Its owning context is the app whose
`contracts` module declares it (`apps.inventory.contracts` -> "inventory"); its
stable wire name is "<context>.<ClassName>" unless `Meta.name` says otherwise.
Per-type options live in an inner `Meta`, as Django users expect:

    class ChargePayment(Command):
        order_id: str
        amount: Decimal

        class Meta:
            qos = QoS.EXACTLY_ONCE
            max_attempts = 5
"""

import enum
from typing import Any, ClassVar

import msgspec


class QoS(enum.StrEnum):
    AT_MOST_ONCE = "at_most_once"
    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


class Kind(enum.StrEnum):
    COMMAND = "command"
    QUERY = "query"
    EVENT = "event"


# Subject segment per kind, as in DESIGN.md: catga.<context>.<cmd|evt|qry>.<Name>.
SUBJECT_SEGMENT = {Kind.COMMAND: "cmd", Kind.EVENT: "evt", Kind.QUERY: "qry"}


class MessageOptions(msgspec.Struct, frozen=True):
    context: str
    name: str
    version: int = 1
    qos: QoS | None = None  # None: CATGA["DEFAULT_QOS"]
    max_attempts: int | None = None  # None: CATGA["MAX_ATTEMPTS"]
    timeout: float | None = None  # seconds; None: CATGA["HANDLER_TIMEOUT"]
    # Its handler acts outside the database (a payment provider): it always holds the
    # inbox claim, history on or off, so a timed-out run and its retry never overlap.
    external_effects: bool = False
    # Celery's rate_limit, held across every replica: "10/s", "600/m", "100/h" (core/limits.py).
    rate_limit: str | None = None
    # Most handlers of this type running at once in one run_consumer process.
    concurrency: int | None = None
    # A durable consumer of its own (core/routing.py): `run_consumer --queue <name>`.
    queue: str | None = None

    @property
    def wire_name(self) -> str:
        return f"{self.context}.{self.name}"


_TYPES: dict[str, type["Message"]] = {}


def _context_from_module(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "apps":
        return parts[1]
    return None


class Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: ClassVar[Kind]
    options: ClassVar[MessageOptions]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ == __name__:
            return  # the abstract bases below
        meta = cls.__dict__.get("Meta")
        context = getattr(meta, "context", None) or _context_from_module(cls.__module__)
        if not context:
            raise TypeError(
                f"{cls.__qualname__}: declare messages in apps.<context>.contracts or give the class a Meta.context"
            )
        cls.options = MessageOptions(
            context=context,
            name=getattr(meta, "name", cls.__name__),
            version=getattr(meta, "version", 1),
            qos=getattr(meta, "qos", None),
            max_attempts=getattr(meta, "max_attempts", None),
            timeout=getattr(meta, "timeout", None),
            external_effects=getattr(meta, "external_effects", False),
            rate_limit=getattr(meta, "rate_limit", None),
            concurrency=getattr(meta, "concurrency", None),
            queue=getattr(meta, "queue", None),
        )
        wire_name = cls.options.wire_name
        previous = _TYPES.get(wire_name)
        if previous is not None and previous.__qualname__ != cls.__qualname__:
            raise TypeError(f"wire name {wire_name!r} is used by {previous!r} and {cls!r}")
        _TYPES[wire_name] = cls

    def validate(self) -> None:
        """Cross-field checks beyond the types; raise ValidationFailed."""


class Command(Message):
    kind = Kind.COMMAND


class Query(Message):
    kind = Kind.QUERY


class Event(Message):
    kind = Kind.EVENT


def message_type(wire_name: str) -> type[Message] | None:
    return _TYPES.get(wire_name)


def contexts_known(configured=()) -> set[str]:
    """Every context a message type names, and the `configured` ones (CATGA["CONTEXTS"])."""
    return set(configured) | {t.options.context for t in _TYPES.values()}


def subject_for(cls: type[Message], prefix: str = "catga") -> str:
    opts = cls.options
    return f"{prefix}.{opts.context}.{SUBJECT_SEGMENT[cls.kind]}.{opts.name}"
