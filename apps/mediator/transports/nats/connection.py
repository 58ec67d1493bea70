"""Connecting to NATS: credentials from settings, reconnects forever once up."""

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client

from apps.mediator.core.conf import catga_settings

logger = logging.getLogger("catga.nats")

MIN_SERVER_VERSION = (2, 10)  # multi-subject consumer filters
ATTEMPT_TIMEOUT = 3.0  # seconds for one connect attempt


def connect_options(name: str) -> dict:
    options = {
        "servers": [url.strip() for url in catga_settings.NATS_URL.split(",") if url.strip()],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
        # A server that stops answering (frozen, a half-open TCP connection) is noticed
        # after three missed pings, not the default two minutes' worth.
        "ping_interval": catga_settings.NATS_PING_INTERVAL,
        "max_outstanding_pings": 3,
    }
    if catga_settings.NATS_TOKEN:
        options["token"] = catga_settings.NATS_TOKEN
    if catga_settings.NATS_USER:
        options["user"] = catga_settings.NATS_USER
        options["password"] = catga_settings.NATS_PASSWORD
    if catga_settings.NATS_CREDS:
        options["user_credentials"] = catga_settings.NATS_CREDS
    return options


async def _on_error(exc: Exception) -> None:
    logger.warning("NATS error: %r", exc)


def _on_disconnected(connection: dict):
    async def disconnected() -> None:
        nc = connection.get("nc")
        if nc is not None and nc.is_closed:  # our own close() (a clean shutdown), not an outage
            logger.debug("NATS connection closed")
            return
        logger.warning("NATS disconnected; reconnecting")

    return disconnected


async def _on_reconnected() -> None:
    logger.info("NATS reconnected")


def redacted(url: str) -> str:
    """A server URL fit for logs: user and password (Secret material) replaced."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


async def connect(name: str, *, attempts: int | None = None, delay: float = 1.0) -> Client:
    """Connect, trying `attempts` times (None: CATGA["CONNECT_ATTEMPTS"]) before raising."""
    attempts = attempts or catga_settings.CONNECT_ATTEMPTS
    options = connect_options(name)
    shown = ", ".join(redacted(url) for url in options["servers"])
    last_error: Exception | None = None
    this = {}  # the client, once connected, for the disconnect callback to tell a close from an outage
    for attempt in range(1, attempts + 1):
        try:
            # With unlimited reconnects nats-py would retry a failing first connect
            # forever; start-up must give up and say so.
            nc = await asyncio.wait_for(
                nats.connect(
                    **options,
                    error_cb=_on_error,
                    disconnected_cb=_on_disconnected(this),
                    reconnected_cb=_on_reconnected,
                ),
                timeout=ATTEMPT_TIMEOUT,
            )
        except Exception as exc:  # nats raises several unrelated types here
            last_error = exc
            logger.warning("NATS unreachable at %s (attempt %d/%d): %r", shown, attempt, attempts, exc)
            if attempt < attempts:
                await asyncio.sleep(delay)
            continue
        this["nc"] = nc
        server = nc.connected_server_version
        version = (server.major, server.minor)
        if version < MIN_SERVER_VERSION:
            await nc.close()
            raise ConnectionError(
                f"NATS server {server} is too old: JetStream multi-filter consumers "
                f"need {'.'.join(map(str, MIN_SERVER_VERSION))} or newer"
            )
        return nc
    raise ConnectionError(f"cannot reach NATS at {shown}: {last_error!r}")
