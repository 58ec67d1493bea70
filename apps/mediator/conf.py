"""The mediator's settings: one namespaced dict, `CATGA`, read lazily like DRF's.

Defaults (override any key in settings.CATGA):

TRANSPORT           "memory" (in-process) or "nats" (JetStream).
NATS_URL            Server URL(s), comma separated.
CONTEXTS            {context name: handlers module}; the composition root reads it.
BEHAVIORS           Dotted paths of pipeline behaviors, outermost first (like MIDDLEWARE).
DEFAULT_QOS         "at_least_once"; a message type's Meta.qos overrides it.
MAX_ATTEMPTS        Deliveries before a failing message is dead-lettered.
RETRY_BACKOFF       Base delay in seconds of the exponential retry backoff.
RETRY_BACKOFF_MAX   Cap of that delay in seconds.
HANDLER_TIMEOUT     Seconds a handler may run; a message type's Meta.timeout overrides it.
RECORD_HISTORY      Store every message and delivery in the history tables.
SUBJECT_PREFIX      First token of every NATS subject.
"""

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS = {
    "TRANSPORT": "memory",
    "NATS_URL": "nats://127.0.0.1:4222",
    "CONTEXTS": {},
    "BEHAVIORS": [
        "apps.mediator.behaviors.LoggingBehavior",
        "apps.mediator.behaviors.ValidationBehavior",
    ],
    "DEFAULT_QOS": "at_least_once",
    "MAX_ATTEMPTS": 5,
    "RETRY_BACKOFF": 0.5,
    "RETRY_BACKOFF_MAX": 60.0,
    "HANDLER_TIMEOUT": 30.0,
    "RECORD_HISTORY": True,
    "SUBJECT_PREFIX": "catga",
}


class CatgaSettings:
    def __init__(self) -> None:
        self._cache: dict = {}

    def __getattr__(self, name: str):
        if name not in DEFAULTS:
            raise AttributeError(f"unknown CATGA setting {name!r}")
        if name not in self._cache:
            user = getattr(settings, "CATGA", {})
            self._cache[name] = user.get(name, DEFAULTS[name])
        return self._cache[name]

    def reload(self) -> None:
        self._cache.clear()


catga_settings = CatgaSettings()


def _reload(*, setting: str, **kwargs) -> None:
    if setting == "CATGA":
        catga_settings.reload()
        from apps.mediator import runtime

        runtime.reset()


setting_changed.connect(_reload)
