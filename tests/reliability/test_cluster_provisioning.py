"""Processes starting together on a 3-node JetStream cluster all get their replicated streams.

On a cluster, the web and every consumer provision the same R3 streams when they
start; JetStream leaves the losers of that race unanswered, and a consumer used to
exit with a timeout (reported as "cannot serve the health port").
"""

import asyncio

import nats
import pytest

from apps.mediator.runtime import get_registry
from apps.mediator.transports.nats import topology
from tests.reliability.stack import NatsCluster

pytestmark = pytest.mark.reliability

PROCESSES = 6


def test_processes_starting_together_on_a_cluster_all_provision_the_replicated_streams(tmp_path, settings):
    settings.CATGA = {**settings.CATGA, "STREAM_REPLICAS": 3}
    (tmp_path / "logs").mkdir()
    cluster = NatsCluster(tmp_path, tmp_path / "logs")
    cluster.start()
    try:
        cluster.wait_healthy(timeout=60)

        async def start_together():
            clients = [await nats.connect(cluster.urls.split(","), **cluster.credentials()) for _ in range(PROCESSES)]
            try:
                return await asyncio.gather(
                    *(topology.ensure_topology(nc.jetstream(), get_registry()) for nc in clients),
                    return_exceptions=True,
                )
            finally:
                for nc in clients:
                    await nc.close()

        outcomes = asyncio.run(start_together())
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes

        async def replicas(js):
            return {
                name: (await js.stream_info(name)).config.num_replicas
                for name in ("CATGA_CMD", "CATGA_EVT", "CATGA_DLQ")
            }

        assert cluster.call(replicas) == {"CATGA_CMD": 3, "CATGA_EVT": 3, "CATGA_DLQ": 3}
    finally:
        cluster.stop()
