"""The configuration file (CATGA_CONFIG_FILE) and the helpers settings.py reads the environment with.

The file is optional JSON, shaped like the ConfigMap Kubernetes mounts:

    {
      "Catga": {
        "EnableLogging": true,        one log line per handled message (LoggingBehavior)
        "EnableTracing": true,        OpenTelemetry spans (sent when an exporter is configured)
        "EnableMetrics": true,        Prometheus counters per handled message (MetricsBehavior)
        "DefaultQoS": "AtLeastOnce",  AtMostOnce | AtLeastOnce | ExactlyOnce
        "MaxAttempts": 5,             deliveries before a failing message is dead-lettered
        "HandlerTimeout": 30,         seconds a handler may run
        "Concurrency": 8,             handler threads per run_consumer process
        "ServiceName": "catga-web"    OpenTelemetry service.name
      },
      "Logging": {
        "LogLevel": {"Default": "Information", "catga.worker": "Debug"},
        "Format": "Json"              Json | Plain
      }
    }

Every key is optional; `Logging` may also sit inside `Catga`. Precedence: an
environment variable (CATGA_DEFAULT_QOS, CATGA_MAX_ATTEMPTS, CATGA_HANDLER_TIMEOUT,
CATGA_CONCURRENCY, CATGA_TRACING, OTEL_SERVICE_NAME, LOG_LEVEL, LOG_FORMAT) wins over
the file, the file wins over the defaults. EnableLogging and EnableMetrics exist only
in the file. A file that is missing, not JSON, or has an unknown key or a value of the
wrong type stops start-up with ImproperlyConfigured naming the file and the key.
"""

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import dj_database_url
import msgspec
from django.core.exceptions import ImproperlyConfigured

Level = Literal["Trace", "Debug", "Information", "Warning", "Error", "Critical", "None"]
QOS = {"AtMostOnce": "at_most_once", "AtLeastOnce": "at_least_once", "ExactlyOnce": "exactly_once"}
LEVELS = {
    "Trace": "DEBUG",
    "Debug": "DEBUG",
    "Information": "INFO",
    "Warning": "WARNING",
    "Error": "ERROR",
    "Critical": "CRITICAL",
    "None": "CRITICAL",  # as good as off: nothing the app logs is above CRITICAL
}
PYTHON_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


class LoggingSection(msgspec.Struct, forbid_unknown_fields=True, rename="pascal"):
    log_level: dict[str, Level] = {}
    format: Literal["Json", "Plain"] | None = None


class CatgaSection(msgspec.Struct, forbid_unknown_fields=True, rename="pascal"):
    enable_logging: bool = True
    enable_tracing: bool | None = None
    enable_metrics: bool = True
    default_qos: Literal["AtMostOnce", "AtLeastOnce", "ExactlyOnce"] | None = msgspec.field(
        default=None, name="DefaultQoS"
    )
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] | None = None
    handler_timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    concurrency: Annotated[int, msgspec.Meta(ge=1)] | None = None
    service_name: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    logging: LoggingSection | None = None


class ConfigFile(msgspec.Struct, forbid_unknown_fields=True, rename="pascal"):
    catga: CatgaSection = msgspec.field(default_factory=CatgaSection)
    logging: LoggingSection | None = None

    @property
    def logging_section(self) -> LoggingSection:
        """`Logging` at the top level, else inside `Catga` (the layout of k8s/base/config/catga.json)."""
        return self.logging or self.catga.logging or LoggingSection()


def load(path: str | None) -> ConfigFile:
    """The validated file at `path`; the defaults when no file is configured."""
    if not path:
        return ConfigFile()
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ImproperlyConfigured(f"CATGA_CONFIG_FILE={path}: cannot read it ({exc.strerror})") from exc
    try:
        return msgspec.json.decode(raw, type=ConfigFile)
    except msgspec.ValidationError as exc:
        # msgspec names the key: "Object contains unknown field `EnableTracng` - at `$.Catga`"
        raise ImproperlyConfigured(f"CATGA_CONFIG_FILE={path}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ImproperlyConfigured(f"CATGA_CONFIG_FILE={path} is not valid JSON: {exc}") from exc


POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql")
# Django's backend, with a transaction's outbox rows written in one INSERT.
POSTGRES_ENGINE = "apps.mediator.storage.backends.postgresql"


def database(url: str | None, *, embedded: Path, conn_max_age: int) -> dict:
    """DATABASES["default"]: DATABASE_URL, else the embedded server's socket in `embedded`."""
    if not url:
        # What apps.mediator.servers.postgres.EmbeddedPostgres(embedded) listens on.
        return {
            "ENGINE": POSTGRES_ENGINE,
            "NAME": "catga",
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": str(embedded.resolve()),
            "PORT": "5432",
            "CONN_MAX_AGE": conn_max_age,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {},
        }
    scheme = url.split("://", 1)[0].lower() if "://" in url else url
    if scheme not in POSTGRES_SCHEMES:
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a PostgreSQL URL (postgres://user:password@host:port/name), not {scheme!r}: "
            "Catga's outbox relay, inbox claims and group commit are PostgreSQL's (SKIP LOCKED, "
            "advisory locks, jsonb). Unset it to use the embedded server `make run` starts."
        )
    parsed = dj_database_url.parse(url, conn_max_age=conn_max_age, conn_health_checks=True)
    parsed["ENGINE"] = POSTGRES_ENGINE
    return parsed


def env_or(name: str, from_file, default, cast=str):
    """The environment variable `name` if set, else the file's value, else `default`."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default if from_file is None else from_file
    try:
        return cast(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r}: {exc}") from exc


def qos(value: str) -> str:
    """A QoS name as the settings hold it; accepts "AtLeastOnce" and "at_least_once"."""
    if value in QOS:
        return QOS[value]
    if value in QOS.values():
        return value
    raise ValueError(f"not a QoS; use one of {', '.join(QOS)}")


# What the file can switch off in the default CATGA["BEHAVIORS"] (apps/mediator/core/conf.py).
SWITCHABLE = {
    "enable_logging": "apps.mediator.core.behaviors.LoggingBehavior",
    "enable_metrics": "apps.mediator.observability.MetricsBehavior",
}
# CATGA_TRANSPORT may name a transport shortly; anything else is a dotted path.
TRANSPORTS = {
    "memory": "apps.mediator.transports.memory.MemoryTransport",
    "nats": "apps.mediator.transports.nats.publisher.NatsTransport",
    "redis": "apps.mediator.transports.redis.publisher.RedisTransport",
}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false).")


def behaviors(config: ConfigFile, defaults: list[str]) -> list[str] | None:
    """CATGA["BEHAVIORS"] without what the file switches off; None when it switches nothing off."""
    off = {path for flag, path in SWITCHABLE.items() if not getattr(config.catga, flag)}
    return [path for path in defaults if path not in off] if off else None


def _json(name: str, raw: str, kind: type):
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise ImproperlyConfigured(f"{name} must be a JSON {'object' if kind is dict else 'array'}")
    return value


def catga_overrides(config: ConfigFile, argv: list[str], *, testing: bool) -> dict:
    """settings.CATGA: only what the environment or the file sets; the defaults live in apps/mediator/core/conf.py.

    Every setting KEY can be set as CATGA_<KEY> (cast like its default: 1/0 for booleans);
    a few have the names the ecosystem uses (NATS_URL, NATS_TOKEN, OTEL_*), and a few
    also come from the file (CATGA_CONFIG_FILE), the environment winning.
    """
    from apps.mediator.core.conf import DEFAULTS  # the one declaration of the settings

    overrides: dict = {}
    for key, default in DEFAULTS.items():
        name = f"CATGA_{key}"
        raw = os.environ.get(name)
        if raw is None:
            continue
        if isinstance(default, dict | list):  # CATGA_SCHEDULES, CATGA_RATE_LIMITS...: JSON
            overrides[key] = _json(name, raw, type(default))
            continue
        overrides[key] = _cast(name, raw, default)
    transport = os.environ.get("CATGA_TRANSPORT") or ("memory" if testing else "nats")
    overrides["TRANSPORT"] = TRANSPORTS.get(transport, transport)
    for name in ("NATS_URL", "REDIS_URL", "REDIS_PASSWORD"):  # the names the ecosystem and the Secret use
        if os.environ.get(name):
            overrides[name] = os.environ[name]
    overrides.update({k: v for k, v in nats_credentials().items() if v})
    section = config.catga
    for key, from_file, cast in (
        ("DEFAULT_QOS", section.default_qos, str),
        ("MAX_ATTEMPTS", section.max_attempts, int),
        ("HANDLER_TIMEOUT", section.handler_timeout, float),
        ("CONCURRENCY", section.concurrency, int),
    ):
        value = env_or(f"CATGA_{key}", from_file, None, cast)
        if value is not None:
            overrides[key] = value
    if "DEFAULT_QOS" in overrides:
        try:
            overrides["DEFAULT_QOS"] = qos(overrides["DEFAULT_QOS"])
        except ValueError as exc:
            raise ImproperlyConfigured(f"CATGA_DEFAULT_QOS={overrides['DEFAULT_QOS']!r}: {exc}") from exc
    chain = behaviors(config, DEFAULTS["BEHAVIORS"])
    if chain is not None:
        overrides["BEHAVIORS"] = chain
    # Observability (docs/operations.md, "Observe").
    overrides["TRACING"] = env_bool("CATGA_TRACING", tracing_default(config)) and not env_bool(
        "OTEL_SDK_DISABLED", False
    )
    overrides["TRACE_OTLP"] = otlp_configured()
    overrides["SERVICE_NAME"] = service_name(config, argv)
    return overrides


def _cast(name: str, raw: str, default):
    if isinstance(default, bool):
        return env_bool(name, default)
    try:
        return type(default)(raw) if default is not None else raw
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r}: {exc}") from exc


def otlp_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def tracing_default(config: ConfigFile) -> bool:
    """EnableTracing when the file says; otherwise on exactly when an OTLP endpoint is configured."""
    return otlp_configured() if config.catga.enable_tracing is None else config.catga.enable_tracing


def service_name(config: ConfigFile, argv: list[str]) -> str:
    role = "catga-consumer" if argv[1:2] == ["run_consumer"] else "catga-web"
    return os.environ.get("OTEL_SERVICE_NAME") or config.catga.service_name or role


def log_level(raw: str) -> str:
    if raw in LEVELS:
        return LEVELS[raw]
    if raw.upper() in PYTHON_LEVELS:
        return raw.upper()
    raise ValueError(f"not a log level; use one of {', '.join(sorted(PYTHON_LEVELS))} or {', '.join(LEVELS)}")


def logging_settings(config: ConfigFile) -> dict:
    """LOGGING: JSON lines (LOG_FORMAT=json, as in Kubernetes) or plain text (the default, `make run`)."""
    section = config.logging_section
    levels = {name: LEVELS[level] for name, level in section.log_level.items()}
    root = env_or("LOG_LEVEL", levels.pop("Default", None), "INFO", log_level)
    fmt = env_or("LOG_FORMAT", section.format.lower() if section.format else None, "plain", _log_format)
    # health_check logs every failing check with a traceback, each probe: the probe's answer says why.
    loggers = {"django.db.backends": {"level": "WARNING"}, "health_check": {"level": "ERROR"}}
    loggers.update({name: {"level": level} for name, level in levels.items()})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"catga": {"()": "apps.mediator.observability.logs.ContextFilter"}},
        "formatters": {
            "json": {"()": "apps.mediator.observability.logs.JsonFormatter"},
            "plain": {"()": "apps.mediator.observability.logs.PlainFormatter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": fmt, "filters": ["catga"]}},
        "root": {"handlers": ["console"], "level": root},
        "loggers": loggers,
    }


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value == "text":
        value = "plain"
    if value not in ("json", "plain"):
        raise ValueError("use json or plain")
    return value


def nats_credentials() -> dict:
    """NATS_TOKEN, or NATS_USER + NATS_PASSWORD, or NATS_CREDS (a .creds file): one style, complete."""
    token, user = os.environ.get("NATS_TOKEN", ""), os.environ.get("NATS_USER", "")
    password, creds = os.environ.get("NATS_PASSWORD", ""), os.environ.get("NATS_CREDS", "")
    styles = [name for name, given in (("NATS_TOKEN", token), ("NATS_USER", user), ("NATS_CREDS", creds)) if given]
    if len(styles) > 1:
        raise ImproperlyConfigured(f"NATS credentials: set one of {' / '.join(styles)}, not several")
    if bool(user) != bool(password):
        raise ImproperlyConfigured("NATS credentials: NATS_USER and NATS_PASSWORD go together")
    if creds and not Path(creds).is_file():
        raise ImproperlyConfigured(f"NATS_CREDS={creds}: no such file")
    return {"NATS_TOKEN": token, "NATS_USER": user, "NATS_PASSWORD": password, "NATS_CREDS": creds}
