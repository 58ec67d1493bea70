"""The mediator's settings: one namespaced dict, `CATGA`, read lazily like DRF's.

Defaults, declared here once (override any key in settings.CATGA; catga_site's settings
set only what the environment gives, as CATGA_<KEY>):

TRANSPORT           Dotted path of the Transport class: the in-memory one (tests, one
                    process), apps.mediator.transports.nats.publisher.NatsTransport or
                    apps.mediator.transports.redis.publisher.RedisTransport.
NATS_URL            Server URL(s), comma separated.
REDIS_URL           The Redis transport's server: redis:// or rediss:// (TLS); redis+cluster://
                    (or REDIS_CLUSTER) for a Redis Cluster, the URL naming any one node.
REDIS_PASSWORD      Redis password (the Secret's redis-password); wins over one in the URL.
REDIS_CLUSTER       Use the Redis Cluster client whatever the URL says.
REDIS_CONFIRM_DELAY Seconds after a publish before its outbox row counts as published on
                    Redis: appendfsync everysec may lose the last second of writes in a
                    server crash or failover, so a publish counts once that much time has
                    passed without a new server (run_id); otherwise the relay sends it again.
REDIS_STREAM_MAXLEN Most entries a Redis stream keeps (0: none; STREAM_MAX_AGE bounds it). A
                    cap also drops unacknowledged entries once exceeded: size it above any backlog.
CONTEXTS            {context name: handlers module}; empty (the default): every installed
                    app with a contracts.py and a handlers.py is a context, named by its
                    label (or its AppConfig's `catga_context`).
BEHAVIORS           Dotted paths of pipeline behaviors, outermost first (like MIDDLEWARE).
DEFAULT_QOS         "at_least_once"; a message type's Meta.qos overrides it.
MAX_ATTEMPTS        Handler failures (as the history records them, not the broker's delivery
                    count) before a failing message is dead-lettered.
RETRY_BACKOFF       Base delay in seconds of the exponential retry backoff.
RETRY_BACKOFF_MAX   Cap of that delay in seconds.
HANDLER_TIMEOUT     Seconds a handler may run; a message type's Meta.timeout overrides it.
RECORD_HISTORY      Store every message and delivery in the history tables (env
                    CATGA_RECORD_HISTORY). Off, only what delivery needs is written:
                    - the outbox row of every AtLeastOnce/ExactlyOnce send, in the
                      sender's transaction (so a rollback sends nothing and the relay
                      covers a NATS outage); an AtLeastOnce row is deleted once JetStream
                      has the message; AtMostOnce sends are not stored at all;
                    - ExactlyOnce messages keep their Message row and their inbox record
                      (Delivery) in the handler's transaction, as with history on;
                    - failures, dead letters and replays are recorded as usual.
                    AtLeastOnce deliveries that succeed leave no rows, so no redelivery is
                    suppressed (at-least-once, as named) and `Handle.status()` / `wait()`
                    and the admin know nothing of them.
HISTORY_RETENTION_DAYS
                    Days `manage.py prune_messages` keeps finished messages (None: forever);
                    pending, retrying and dead messages are kept until resolved.
SUBJECT_PREFIX      First token of every NATS subject (and of stream names, upper-cased).
NATS_TOKEN, NATS_USER, NATS_PASSWORD, NATS_CREDS
                    Credentials (from a Secret), any one style.
ROLE                What this process may publish as (core/roles.py): a context, "web", or
                    "" for anything. With per-role NATS users (`manage.py nats_permissions`)
                    it is the user's name: the process hands NATS only what that user may
                    publish, and its outbox relay takes only those rows.
WEB_CONTEXTS        The contexts whose commands the web runs in-process (`mediator.execute`):
                    the web role publishes what their roles publish. Empty: every context.
STREAM_REPLICAS     JetStream replicas of the app's streams (3 on a 3-node cluster).
STREAM_MAX_AGE      Seconds a message stays in the command/event streams.
DLQ_MAX_AGE         Seconds a dead letter stays in the dead-letter stream.
DLQ_MAX_BYTES       Most bytes the dead-letter stream holds; when full, the oldest dead letters
                    are dropped from the stream (their rows stay in the history, which replay
                    reads), so dead-lettering never stalls a consumer.
STREAM_STORAGE      "file" or "memory".
DUPLICATE_WINDOW    Seconds JetStream remembers a Nats-Msg-Id to drop re-publishes.
ACK_WAIT            Seconds before an unacknowledged delivery is redelivered.
CONCURRENCY         Handler threads per run_consumer process.
FETCH_BATCH         Most messages fetched per pull request.
PREFETCH_MULTIPLIER Messages in flight per handler thread (Celery's worker_prefetch_multiplier):
                    a thread takes its share of a fetched batch in one hand-off. 1 gives
                    a slow handler's neighbours no wait behind it, at more cost per message.
PREFETCH_SECONDS    With fast handlers, more messages in flight than CONCURRENCY x PREFETCH_MULTIPLIER:
                    as many as the process handles in this many seconds (the most work it
                    holds back from other replicas), up to 4 x FETCH_BATCH.
GROUP_COMMIT        Seconds a handler thread may keep adding deliveries to one transaction
                    (a group commit: one disk flush for several). 0 commits each on its own.
NATS_PING_INTERVAL  Seconds between pings to the NATS server; three unanswered ones mark the
                    connection stale (a frozen server), so it reconnects and readiness turns
                    false in about four intervals instead of nats-py's default of minutes.
CONNECT_ATTEMPTS    Tries to reach NATS at start-up before run_consumer gives up.
PUBLISH_TIMEOUT     Seconds to wait for JetStream's ack of a publish.
RELAY_INTERVAL      Seconds between outbox relay sweeps.
RELAY_GRACE         Age in seconds before the relay takes over an unpublished row
                    (younger rows are still being published right after commit).
RELAY_BATCH         Rows per relay transaction.
SHUTDOWN_GRACE      Seconds run_consumer gives in-flight handlers after SIGTERM.
MAX_BODY_BYTES      Largest message body a worker decodes; bigger ones are dead-lettered unread
                    (the NATS servers' max_payload, `manage.py nats_permissions`, is this plus
                    64 KiB for headers).
MAX_BODY_DEPTH      Deepest nesting of a body's JSON; deeper ones are dead-lettered unread.
MAX_HEADER_LENGTH   Longest value of any header of a received message (a W3C tracestate
                    is at most 512); longer ones are dead-lettered unread.
OUTAGE_RETRY_MAX    Cap in seconds of the delay between retries of a delivery that could not
                    reach the database: it costs no attempt and is retried for as long as the
                    outage lasts.
LIVENESS_WINDOW     Seconds without progress (a fetch returning, a handler heartbeat) before
                    run_consumer's /health/live fails and Kubernetes restarts it.
METRICS_INTERVAL    Seconds between run_consumer's readings of JetStream lag and outbox backlog.
WORKER_HEARTBEAT    Seconds between run_consumer's heartbeats: its row in the workers view (admin
                    "Workers", `manage.py catga_inspect`). A worker is live while its last beat is
                    within 3 intervals; rows silent for 10 are deleted. 0: no heartbeat rows.
ROUTES              {wire name: queue}: a type's own durable consumer (`<context>_cmd_<queue>`),
                    consumed by `run_consumer --queue <queue>` (core/routing.py, task_routes).
                    Wins over the type's Meta.queue.
RATE_LIMITS         {wire name: "10/s"}: starts per second (or /m, /h) of a type across every
                    replica, held by a PostgreSQL token schedule (storage/rate_limits.py); a
                    message over it is redelivered at its turn, spending no attempt. Wins over
                    the type's Meta.rate_limit.
CONCURRENCY_LIMITS  {wire name: N}: most handlers of a type at once in one run_consumer (over it:
                    redelivered shortly, no attempt spent). Wins over Meta.concurrency.
SCHEDULES           Periodic commands, by name (storage/schedules.py; editable in the admin):
                    {"name": {"message": "<wire name>", "payload": {...}, "every": seconds}}
                    or "cron": "30 3 * * *" with "timezone": "Europe/Paris"; "enabled": False.
                    Fired once per tick by whichever run_consumer claims it; no beat process.
SCHEDULE_CATCHUP    Seconds back a schedule fires the ticks it missed while no consumer ran;
                    older misses collapse into one run.
PRUNE_SCHEDULE      Cron (UTC) of the daily `prune_messages` with HISTORY_RETENTION_DAYS ("" off):
                    the schedule "catga.prune-messages", so no CronJob is needed.
TRACING             Record OpenTelemetry spans (needs TRACE_OTLP or TRACE_FILE to send them).
TRACE_OTLP          Export spans over OTLP/HTTP (configured by the OTEL_EXPORTER_OTLP_* variables).
TRACE_FILE          Also write finished spans as JSON lines to this file (debugging, tests).
SERVICE_NAME        OpenTelemetry service.name of this process.
"""

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS = {
    "TRANSPORT": "apps.mediator.transports.memory.MemoryTransport",
    "NATS_URL": "nats://127.0.0.1:4222",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "REDIS_PASSWORD": "",
    "REDIS_CLUSTER": False,
    "REDIS_CONFIRM_DELAY": 2.0,
    "REDIS_STREAM_MAXLEN": 0,
    "CONTEXTS": {},
    "BEHAVIORS": [
        "apps.mediator.observability.TracingBehavior",
        "apps.mediator.core.behaviors.LoggingBehavior",
        "apps.mediator.observability.MetricsBehavior",
        "apps.mediator.core.behaviors.ValidationBehavior",
    ],
    "DEFAULT_QOS": "at_least_once",
    "MAX_ATTEMPTS": 5,
    "RETRY_BACKOFF": 0.5,
    "RETRY_BACKOFF_MAX": 60.0,
    "HANDLER_TIMEOUT": 30.0,
    "RECORD_HISTORY": True,
    "HISTORY_RETENTION_DAYS": 30,
    "SUBJECT_PREFIX": "catga",
    "NATS_TOKEN": "",
    "NATS_USER": "",
    "NATS_PASSWORD": "",
    "NATS_CREDS": "",
    "ROLE": "",
    "WEB_CONTEXTS": [],
    "STREAM_REPLICAS": 1,
    "STREAM_MAX_AGE": 7 * 24 * 3600,
    "DLQ_MAX_AGE": 30 * 24 * 3600,
    "DLQ_MAX_BYTES": 1024**3,
    "STREAM_STORAGE": "file",
    "DUPLICATE_WINDOW": 120,
    "ACK_WAIT": 30.0,
    "CONCURRENCY": 8,
    "FETCH_BATCH": 64,
    "PREFETCH_MULTIPLIER": 4,
    "PREFETCH_SECONDS": 0.25,
    "GROUP_COMMIT": 0.02,
    "NATS_PING_INTERVAL": 10.0,
    "CONNECT_ATTEMPTS": 5,
    "PUBLISH_TIMEOUT": 5.0,
    "RELAY_INTERVAL": 1.0,
    "RELAY_GRACE": 5.0,
    "RELAY_BATCH": 200,
    "SHUTDOWN_GRACE": 20.0,
    "MAX_BODY_BYTES": 256 * 1024,
    "MAX_BODY_DEPTH": 64,
    "MAX_HEADER_LENGTH": 1024,
    "OUTAGE_RETRY_MAX": 5.0,
    "LIVENESS_WINDOW": 30.0,
    "METRICS_INTERVAL": 15.0,
    "WORKER_HEARTBEAT": 10.0,
    "ROUTES": {},
    "RATE_LIMITS": {},
    "CONCURRENCY_LIMITS": {},
    "SCHEDULES": {},
    "SCHEDULE_CATCHUP": 60.0,
    "PRUNE_SCHEDULE": "30 3 * * *",
    "TRACING": False,
    "TRACE_OTLP": False,
    "TRACE_FILE": "",
    "SERVICE_NAME": "catga",
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
    # The runtime resets its mediator on the same signal (it is connected after this one).
    if setting == "CATGA":
        catga_settings.reload()


setting_changed.connect(_reload)
