"""The Redis transport's start-up refusals, URLs and topology (issue 17), without a server."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.mediator import runtime
from apps.mediator.transports.redis import connection, entries, scripts, topology


def test_nats_only_options_are_refused_by_name(settings):
    settings.CATGA = {**settings.CATGA, "STREAM_REPLICAS": 3, "NATS_TOKEN": "s3cret"}
    with pytest.raises(ImproperlyConfigured, match="NATS_TOKEN, STREAM_REPLICAS: NATS-only"):
        connection.check_settings()


def test_the_transport_refuses_them_at_start_up(settings):
    from apps.mediator.transports.redis.publisher import RedisTransport

    settings.CATGA = {**settings.CATGA, "STREAM_STORAGE": "memory"}
    with pytest.raises(ImproperlyConfigured, match="STREAM_STORAGE"):
        RedisTransport(runtime.get_mediator().dispatcher)


@pytest.mark.parametrize(("version", "refused"), [("6.0.16", True), ("6.2.0", False), ("7.0.15", False)])
def test_a_redis_older_than_6_2_is_refused_with_its_version(version, refused):
    if refused:
        with pytest.raises(connection.ServerTooOld, match=f"Redis {version} is too old"):
            connection.check_server_version(version)
        assert issubclass(connection.ServerTooOld, ConnectionError)  # run_consumer shows it as a CommandError
    else:
        connection.check_server_version(version)


def test_the_oldest_node_of_a_cluster_decides():
    answers = {"a:1": {"redis_version": "7.2.4"}, "b:2": {"redis_version": "6.0.9"}}
    assert connection.oldest_version(answers) == "6.0.9"


def test_cluster_urls_and_the_flag(settings):
    assert connection.is_cluster("redis+cluster://r:6379/0", False)
    assert connection.is_cluster("rediss+cluster://r:6379/0", False)
    assert connection.is_cluster("redis://r:6379/0", True)
    assert not connection.is_cluster("rediss://r:6379/0", False)
    assert connection.plain_url("rediss+cluster://r:6379/0") == "rediss://r:6379/0"


def test_redis_password_wins_over_the_urls(settings):
    settings.CATGA = {**settings.CATGA, "REDIS_PASSWORD": "from-secret"}
    client = connection.make_client("redis://app:from-url@r:6379/2", sync=True)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["username"], kwargs["db"]) == ("from-secret", "app", 2)


def test_tls_urls_make_tls_connections():
    client = connection.make_client("rediss://r:6380/0", sync=True)
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_urls_in_logs_hide_the_password():
    assert connection.redacted("redis://app:pw@r:6379/0") == "redis://***@r:6379/0"
    assert connection.redacted("redis://r:6379/0") == "redis://r:6379/0"


def test_groups_are_the_nats_durables_and_keys_share_one_slot_per_context(settings):
    found = {d.name: d for d in topology.durables(runtime.get_registry(), runtime.get_registry().contexts)}
    assert {"orders_cmd", "inventory_cmd", "payments_cmd", "orders_evt", "inventory_evt"} <= set(found)
    assert found["payments_cmd"].streams == ("{catga:payments}:cmd",)
    # An event group reads the event stream of each context whose events it handles.
    assert all(stream.endswith(":evt") for stream in found["inventory_evt"].streams)
    stream = found["payments_cmd"].streams[0]
    assert {topology.retry_key(stream), topology.dlq_key(stream), topology.dedupe_key("payments", "x")} == {
        "{catga:payments}:cmd:retry",
        "{catga:payments}:dlq",
        "{catga:payments}:dedupe:x",
    }


def test_a_routed_command_gets_a_group_of_its_own(settings):
    settings.CATGA = {**settings.CATGA, "ROUTES": {"payments.ChargePayment": "slow"}}
    found = {d.name: d for d in topology.durables(runtime.get_registry(), ["payments"])}
    slow, default = found["payments_cmd_slow"], found["payments_cmd"]
    assert slow.streams == default.streams == ("{catga:payments}:cmd",)
    assert slow.wants("catga.payments.cmd.ChargePayment") and not slow.wants("catga.payments.cmd.RefundPayment")
    # The default group takes every command: a routed one it acknowledges, an unknown one it buries.
    assert default.wants("catga.payments.cmd.NoSuchCommand")


def test_netstrings_round_trip_any_bytes():
    values = [b"", b"a:b", bytes(range(256)), "ü".encode()]
    assert scripts.unnetstrings(scripts.netstrings(values)) == values


def test_an_entry_reads_back_as_its_headers_body_and_subject():
    from apps.inventory.contracts import ReserveStock, StockLine
    from apps.mediator.core import codec
    from apps.mediator.core.envelope import Envelope
    from apps.mediator.core.messages import QoS
    from apps.mediator.core.ports import Outgoing

    command = ReserveStock(order_id="o-1", lines=(StockLine(sku="SKU-A", quantity=1),))
    item = Outgoing(Envelope.for_message(command, qos=QoS.AT_LEAST_ONCE), codec.encode(command))
    fields = entries.fields_of(item)
    headers, body, subject = entries.parse(dict(zip(fields[::2], fields[1::2], strict=True)))
    assert (headers, body, subject) == (item.headers(), item.body, "catga.inventory.cmd.ReserveStock")
    assert entries.stream_of(item) == "{catga:inventory}:cmd"
    assert entries.unpayload(entries.payload(item)) == dict(zip(fields[::2], fields[1::2], strict=True))
