"""The composition root: builds the one mediator of this process from settings.

Tests that need other handlers build their own `Mediator` from a `Registry`;
everything else uses `mediator`, a proxy to the process-wide instance.
"""

import atexit
import threading

from django.utils.module_loading import import_string

from apps.mediator.conf import catga_settings
from apps.mediator.dispatcher import Dispatcher
from apps.mediator.mediator import Mediator
from apps.mediator.pipeline import Pipeline
from apps.mediator.registry import Registry

TRANSPORTS = {
    "memory": "apps.mediator.transports.memory.MemoryTransport",
    "nats": "apps.mediator.transports.nats.publisher.NatsTransport",
}

_lock = threading.Lock()
_instance: Mediator | None = None
_registry: Registry | None = None


def get_registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = Registry.from_settings(catga_settings.CONTEXTS)
    return _registry


def build_dispatcher() -> Dispatcher:
    return Dispatcher(get_registry(), Pipeline.from_paths(catga_settings.BEHAVIORS))


def get_mediator() -> Mediator:
    global _instance
    if _instance is None:
        with _lock:
            if _instance is None:
                dispatcher = build_dispatcher()
                name = catga_settings.TRANSPORT
                if name not in TRANSPORTS:
                    from django.core.exceptions import ImproperlyConfigured

                    raise ImproperlyConfigured(
                        f"CATGA_TRANSPORT={name!r} is not one of: {', '.join(sorted(TRANSPORTS))}"
                    )
                transport = import_string(TRANSPORTS[name])(dispatcher)
                _instance = Mediator(get_registry(), dispatcher, transport)
                atexit.register(_close_at_exit, _instance)
    return _instance


def _close_at_exit(instance: Mediator) -> None:
    instance.transport.close()


def reset() -> None:
    global _instance, _registry
    with _lock:
        if _instance is not None:
            _instance.transport.close()
        _instance = None
        _registry = None


class _MediatorProxy:
    def __getattr__(self, name):
        return getattr(get_mediator(), name)


mediator: Mediator = _MediatorProxy()  # type: ignore[assignment]
