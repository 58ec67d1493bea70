"""Catga for Django: the public API. Import from here, not from the subpackages.

    from apps.mediator import Command, Event, Query, QoS, mediator

    class ReserveStock(Command):           # contracts.py of the "inventory" app
        order_id: int

    handle = mediator.send(ReserveStock(order_id=7))      # views, shells, scripts
    ctx.mediator.publish(StockReserved(order_id=7))       # inside a handler(message, ctx)

Names are loaded on first use (PEP 562), so this package imports nothing of Django's
ORM until a name that needs it is asked for: `apps.mediator` is an installed app and
is imported before the app registry is ready.

Layers, top to bottom (an import-linter contract): runtime/management/admin >
console/api > orchestration > consumer/transports > delivery > storage >
observability > core.
"""

from importlib import import_module

_EXPORTS = {
    # Messages and their guarantees
    "Command": "apps.mediator.core.messages",
    "Event": "apps.mediator.core.messages",
    "Query": "apps.mediator.core.messages",
    "QoS": "apps.mediator.core.messages",
    "new_id": "apps.mediator.core.ids",
    # The process's mediator and what it returns
    "mediator": "apps.mediator.runtime",
    "Mediator": "apps.mediator.delivery.mediator",
    "Handle": "apps.mediator.delivery.mediator",
    "HandlerFailed": "apps.mediator.delivery.mediator",
    "HandlerContext": "apps.mediator.core.pipeline",
    # Handlers marked where they are defined (the registry finds them in the handlers module)
    "handles": "apps.mediator.core.registry",
    # Errors: one hierarchy, mapped to HTTP by the API and to ack/retry/dead by the consumer
    "CatgaError": "apps.mediator.core.errors",
    "TransientError": "apps.mediator.core.errors",
    "PermanentError": "apps.mediator.core.errors",
    "ValidationFailed": "apps.mediator.core.errors",
    "NotFound": "apps.mediator.core.errors",
    "Conflict": "apps.mediator.core.errors",
    "NoHandler": "apps.mediator.core.errors",
    # Orchestration
    "Saga": "apps.mediator.orchestration.sagas",
    "Step": "apps.mediator.orchestration.sagas",
    "saga_timeline": "apps.mediator.orchestration.sagas",
    "SagaState": "apps.mediator.models",
    "WorkflowFailed": "apps.mediator.orchestration.workflows",
    # The transport seam
    "Transport": "apps.mediator.core.ports",
    "Subscription": "apps.mediator.core.ports",
    "Delivery": "apps.mediator.core.ports",
    # The operations console's extension points
    "register_search": "apps.mediator.console.extensions",
    "register_panel": "apps.mediator.console.extensions",
}
_RENAMED = {"saga_timeline": "timeline"}


def chain(*commands, **options):
    """A Celery-style chain of commands through the process's mediator (orchestration.workflows)."""
    from apps.mediator.orchestration import workflows
    from apps.mediator.runtime import mediator

    return workflows.chain(*commands, mediator=mediator, **options)


def group(commands, **options):
    """A Celery-style group of commands, with an optional callback (orchestration.workflows)."""
    from apps.mediator.orchestration import workflows
    from apps.mediator.runtime import mediator

    return workflows.group(commands, mediator=mediator, **options)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [*_EXPORTS, "chain", "group"]
