"""The composition root: builds the one mediator of this process from settings.

Everything is wired here and nowhere else: the registry from the contexts found in
INSTALLED_APPS (or CATGA["CONTEXTS"]), the pipeline from CATGA["BEHAVIORS"], the
transport from the dotted path in CATGA["TRANSPORT"], and the chain/group bookkeeping
the dispatcher calls. Only the top layer (management commands, the admin wiring, the
health checks, the package's public API) imports this module; handlers get the
mediator as `ctx.mediator`.

Tests that need other handlers build their own `Mediator` from a `Registry`;
everything else uses `mediator`, a proxy to the process-wide instance.
"""

import atexit
import threading
from importlib.util import find_spec

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.pipeline import Pipeline
from apps.mediator.core.ports import Transport
from apps.mediator.core.registry import Registry
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.mediator import Mediator
from apps.mediator.orchestration import deadlines, workflows

_lock = threading.Lock()
_instance: Mediator | None = None
_registry: Registry | None = None


def contexts() -> dict[str, str]:
    """{context: handlers module}: CATGA["CONTEXTS"], or every installed app with contracts and handlers."""
    if catga_settings.CONTEXTS:
        return dict(catga_settings.CONTEXTS)
    found = {}
    for config in apps.get_app_configs():
        if find_spec(f"{config.name}.contracts") and find_spec(f"{config.name}.handlers"):
            found[getattr(config, "catga_context", config.label)] = f"{config.name}.handlers"
    return found


def get_registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = Registry.from_settings(contexts())
    return _registry


def build_dispatcher() -> Dispatcher:
    pipeline = Pipeline.from_paths(catga_settings.BEHAVIORS)
    return Dispatcher(get_registry(), pipeline, workflows=workflows, timers=deadlines)


def transport_class() -> type[Transport]:
    path = catga_settings.TRANSPORT
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f'CATGA["TRANSPORT"]={path!r} cannot be imported: {exc}') from exc
    if not (isinstance(cls, type) and issubclass(cls, Transport)):
        raise ImproperlyConfigured(f'CATGA["TRANSPORT"]={path!r} is not a Transport class')
    return cls


def get_mediator() -> Mediator:
    global _instance
    if _instance is None:
        with _lock:
            if _instance is None:
                dispatcher = build_dispatcher()
                _instance = Mediator(get_registry(), dispatcher, transport_class()(dispatcher))
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


def _reset_on_change(*, setting: str, **kwargs) -> None:
    if setting == "CATGA":
        reset()


setting_changed.connect(_reset_on_change)


class _MediatorProxy:
    def __getattr__(self, name):
        return getattr(get_mediator(), name)

    def __repr__(self) -> str:
        return "<the process's mediator>"


mediator: Mediator = _MediatorProxy()  # type: ignore[assignment]
