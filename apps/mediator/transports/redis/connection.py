"""Connecting to Redis (or Redis Cluster): the client from settings, the checks that refuse to start.

REDIS_URL `redis://` or `rediss://` (TLS) is one server; `redis+cluster://` /
`rediss+cluster://`, or CATGA["REDIS_CLUSTER"], is a Redis Cluster (the URL names any
one node; the client discovers the others). REDIS_PASSWORD, when set, wins over a
password in the URL (it comes from the Secret; the URL from a ConfigMap).

redis-py raises its own ConnectionError and TimeoutError (not the builtin ones that
run_consumer and catga_status turn into a clear CommandError): `connect` converts them.
"""

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.cluster
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from apps.mediator.core.conf import DEFAULTS, catga_settings

logger = logging.getLogger("catga.redis")

MIN_SERVER_VERSION = (6, 2)  # XAUTOCLAIM, XADD MINID
ATTEMPT_TIMEOUT = 3.0  # seconds for one connect attempt
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# Settings that promise what only NATS gives: credentials (Redis has its own password),
# replication and the storage type (a Redis server's persistence is its own configuration,
# Redis Cluster's replicas its topology). Set for a Redis transport they would be silently
# ignored, so start-up refuses them. NATS_URL and NATS_PING_INTERVAL only name a place or a
# rhythm (a ConfigMap shared by both transports may well set them): they are ignored.
NATS_ONLY = ("NATS_TOKEN", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS", "STREAM_REPLICAS", "STREAM_STORAGE")


class ServerTooOld(ImproperlyConfigured, ConnectionError):
    """A refusal at start-up that run_consumer (ConnectionError) and Django (ImproperlyConfigured) both show."""


def check_settings(settings=catga_settings) -> None:
    """Refuse NATS-only options set while the transport is Redis (they would mean nothing)."""
    wrong = [name for name in NATS_ONLY if getattr(settings, name) != DEFAULTS[name]]
    if wrong:
        raise ImproperlyConfigured(
            f"CATGA {', '.join(wrong)}: NATS-only option(s) set while the transport is Redis, which "
            "ignores them (Redis authenticates with REDIS_PASSWORD; replication and storage are the "
            "Redis server's or Redis Cluster's own configuration). Unset them or use the NATS transport."
        )


def parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_server_version(version: str) -> None:
    """Refuse a Redis older than 6.2 (`version` as INFO server's redis_version gives it)."""
    if parse_version(version) < MIN_SERVER_VERSION:
        raise ServerTooOld(
            f"REDIS_URL: Redis {version} is too old for the Redis transport: XAUTOCLAIM and XADD MINID "
            f"need {'.'.join(map(str, MIN_SERVER_VERSION))} or newer"
        )


def is_cluster(url: str, flag: bool) -> bool:
    return flag or urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def client_options() -> dict:
    options = {
        "decode_responses": False,  # bodies are bytes
        "socket_connect_timeout": 2.0,
        # No socket timeout: XREADGROUP BLOCK waits on its connection for as long as it
        # asks; every other call is bounded by the caller (asyncio timeouts).
        "socket_timeout": None,
        "socket_keepalive": True,
        "health_check_interval": 10,  # a connection idle that long is PINGed before reuse
    }
    if catga_settings.REDIS_PASSWORD:
        options["password"] = catga_settings.REDIS_PASSWORD
    return options


def make_client(url: str | None = None, *, cluster: bool | None = None, sync: bool = False, **overrides):
    """A client for `url` (REDIS_URL): RedisCluster for a cluster URL or REDIS_CLUSTER, else Redis;
    the asyncio client, or with `sync` the threaded one (the publisher's sender thread, the web).

    Builds it only (but the threaded cluster client asks a node for the slot map at once).
    """
    url = url or catga_settings.REDIS_URL
    cluster = catga_settings.REDIS_CLUSTER if cluster is None else cluster
    options = {**client_options(), **overrides}
    if is_cluster(url, cluster):
        options.pop("health_check_interval", None)  # per-node connections; the cluster client has its own checks
        return (redis.cluster.RedisCluster if sync else RedisCluster).from_url(plain_url(url), **options)
    return (redis.Redis if sync else Redis).from_url(plain_url(url), **options)


def plain_url(url: str | None = None) -> str:
    """The URL as redis-py takes it: the cluster scheme made plain, and without the URL's password
    when REDIS_PASSWORD is set (redis-py lets the URL's win over the option's)."""
    parts = urlsplit(url or catga_settings.REDIS_URL)
    scheme = parts.scheme.lower()
    parts = parts._replace(scheme=CLUSTER_SCHEMES.get(scheme, scheme))
    if catga_settings.REDIS_PASSWORD and parts.password is not None:
        user = f"{parts.username}@" if parts.username else ""
        parts = parts._replace(netloc=user + parts.netloc.rsplit("@", 1)[1])
    return urlunsplit(parts)


def redacted(url: str) -> str:
    """A server URL fit for logs: user and password (Secret material) replaced."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def oldest_version(answers) -> str:
    """redis_version from INFO server: one node's answer, or the oldest of a cluster's (a rolling upgrade)."""
    infos = [answers] if "redis_version" in answers else [v for v in answers.values() if isinstance(v, dict)]
    return min((str(info["redis_version"]) for info in infos), key=parse_version)


async def server_version(client) -> str:
    if isinstance(client, RedisCluster):
        # Every node answers; the oldest decides (a rolling upgrade mid-way).
        return oldest_version(await client.info("server", target_nodes=RedisCluster.ALL_NODES))
    return str((await client.info("server"))["redis_version"])


async def connect(*, attempts: int | None = None, delay: float = 1.0):
    """A client whose server answered and is new enough, trying `attempts` times (None: CONNECT_ATTEMPTS)."""
    attempts = attempts or catga_settings.CONNECT_ATTEMPTS
    shown = redacted(catga_settings.REDIS_URL)
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        client = make_client()
        try:
            version = await asyncio.wait_for(server_version(client), ATTEMPT_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            last_error = exc
            await close_quietly(client)
            logger.warning("Redis unreachable at %s (attempt %d/%d): %r", shown, attempt, attempts, exc)
            if attempt < attempts:
                await asyncio.sleep(delay)
            continue
        try:
            check_server_version(version)
        except ServerTooOld:
            await close_quietly(client)
            raise
        return client
    raise ConnectionError(f"cannot reach Redis at {shown}: {last_error!r}")


async def close_quietly(client) -> None:
    try:
        await client.aclose()
    except Exception:  # closing: nothing useful left to do with an error
        logger.debug("closing a Redis client failed", exc_info=True)
