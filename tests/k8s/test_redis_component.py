"""The Redis transport's components: k8s/components/redis (server + wiring), redis-external
(wiring only) and keda-redis, rendered on top of the overlays the way an operator switches
them on (README "Redis instead of NATS"): the components appended after networkpolicy,
`redis-password` added to secret.env, catga-nats-users dropped (nothing reads it any more).
"""

import copy
import os
import re
import shutil
import socket
import subprocess
import time

import pytest
import yaml

from tests.k8s.manifests import (
    NAMESPACES,
    Render,
    config_env,
    containers,
    pod_labels,
    pod_spec,
    prepare_tree,
    render,
    selects,
)
from tests.k8s.policies import (
    autoscaling_violations,
    env_expansion_violations,
    env_names,
    generated_reference_violations,
    grace_violations,
    hardening_violations,
    metrics_discovery_violations,
    name_of,
    probe_violations,
    resource_violations,
    secret_key_ref,
    selector_violations,
    target_port_violations,
)
from tests.k8s.test_schema import KUBERNETES_VERSIONS, problems

pytestmark = pytest.mark.k8s

APP_CONTAINERS = ("web", "consumer", "migrate")
PASSWORD = "r" + "0123456789abcdef" * 3  # letters and digits, as the component's comment asks
EXTERNAL_URL = "rediss://redis.example.com:6380/0"
# What an operator lists in components: (overlay, components, the overlay's own REDIS_URL).
SETUPS = {
    "dev": ("dev", ("networkpolicy", "redis"), None),
    "prod": ("prod", ("hpa-web", "networkpolicy", "redis", "keda-redis"), None),
    "prod-external": ("prod", ("hpa-web", "networkpolicy", "redis-external"), EXTERNAL_URL),
}
# The redis-streams trigger's parameters (KEDA docs, "Redis Streams"); the project's
# ScaledObject schema checks only that trigger metadata values are strings.
REDIS_STREAMS_METADATA = {
    "address", "host", "port", "addressFromEnv", "hostFromEnv", "portFromEnv", "usernameFromEnv",
    "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount", "streamLength", "lagCount",
    "activationLagCount", "activationStreamLength", "enableTLS", "unsafeSsl", "databaseIndex",
}  # fmt: skip


def setup_dir(tree, name: str, *, before: tuple[str, ...] = ()):
    """A copy of the overlay with the Redis components on, as README's steps make it
    (and the components `before` ahead of them)."""
    overlay, components, url = SETUPS[name]
    components = before + components
    source, target = tree / "overlays" / overlay, tree / "overlays" / f"{overlay}--{'-'.join((name, *before))}"
    shutil.copytree(source, target)
    with (target / "secret.env").open("a") as secret:
        secret.write(f"redis-password={PASSWORD}\n")
    (target / "nats-users.env").unlink()
    kustomization = yaml.safe_load((target / "kustomization.yaml").read_text())
    kustomization["components"] = [f"../../components/{component}" for component in components]
    kustomization["secretGenerator"] = [s for s in kustomization["secretGenerator"] if s["name"] == "catga-secrets"]
    if url:
        kustomization["configMapGenerator"] = [
            {"name": "catga-env", "behavior": "merge", "literals": [f"REDIS_URL={url}"]}
        ]
    (target / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return prepare_tree(tmp_path_factory.mktemp("k8s-redis"))


@pytest.fixture(scope="module")
def setups(tree) -> dict[str, Render]:
    return {name: render(setup_dir(tree, name), name) for name in SETUPS}


def app_containers(rendered: Render):
    for workload in rendered.workloads():
        for container in containers(workload, init=False):
            if container["name"] in APP_CONTAINERS:
                yield workload, container


def redis_conf(rendered: Render) -> str:
    statefulset = rendered.get("StatefulSet", "redis")
    volume = next(v for v in pod_spec(statefulset)["volumes"] if "configMap" in v)
    return rendered.get("ConfigMap", volume["configMap"]["name"])["data"]["redis.conf"]


def directives(conf: str) -> dict[str, str]:
    lines = (line.split(None, 1) for line in conf.splitlines() if line.strip() and not line.startswith("#"))
    return {parts[0]: parts[1] if len(parts) > 1 else "" for parts in lines}


# --- rendering ------------------------------------------------------------------------


def test_the_redis_setups_render_without_warnings_and_without_nats(setups):
    for name, rendered in setups.items():
        assert not rendered.stderr.strip(), f"{name}: {rendered.stderr}"
        leftovers = [name_of(doc) for doc in rendered.docs if doc["metadata"]["name"].startswith("nats")]
        assert not leftovers, f"{name}: NATS is not needed with Redis, yet {leftovers} are rendered"
        assert rendered.find("Secret", "catga-nats-users") is None


def test_an_external_redis_deploys_no_server(setups):
    external = setups["prod-external"]
    assert not [doc for doc in external.docs if doc["metadata"]["name"].startswith("redis")]
    assert setups["prod"].get("StatefulSet", "redis") and setups["dev"].get("StatefulSet", "redis")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_schemas_the_other_renders_use(setups, version):
    errors = [message for rendered in setups.values() for doc in rendered.docs for message in problems(doc, version)]
    assert not errors, "\n".join(errors)


def test_everything_is_in_the_overlays_namespace(setups):
    for name, rendered in setups.items():
        namespace = NAMESPACES[SETUPS[name][0]]
        misplaced = [
            name_of(d)
            for d in rendered.docs
            if d["kind"] != "Namespace" and d["metadata"].get("namespace") != namespace
        ]
        assert not misplaced, f"{name}: {misplaced}"


# --- the server -----------------------------------------------------------------------


def test_redis_keeps_an_append_only_file_flushed_every_second_and_never_evicts(setups):
    settings = directives(redis_conf(setups["prod"]))
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "noeviction", "an evicted stream entry is a lost message"
    assert settings["dir"] == "/data"
    assert "requirepass" not in settings, "the password comes from the Secret, never from the ConfigMap"


def test_redis_stores_on_its_claim_and_reads_its_password_from_the_secret(setups):
    statefulset = setups["prod"].get("StatefulSet", "redis")
    container = pod_spec(statefulset)["containers"][0]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", container["image"]), "an exact version tag"
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts["/data"] in claims
    env = {var["name"]: var for var in container["env"]}
    assert secret_key_ref(env["REDIS_PASSWORD"]) == ("catga-secrets", "redis-password")
    assert "requirepass" in container["args"][0] and "$REDIS_PASSWORD" in container["args"][0]
    assert "REDIS_PASSWORD" not in " ".join(container["command"]), "the password stays out of argv"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = " ".join(container[kind]["exec"]["command"])
        assert "redis-cli" in command and "ping" in command and "REDISCLI_AUTH" in command, kind
    service = setups["prod"].get("Service", "redis")
    assert [port["port"] for port in service["spec"]["ports"]] == [6379]
    headless = setups["prod"].get("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


def test_redis_shuts_down_within_its_grace_period(setups):
    statefulset = setups["prod"].get("StatefulSet", "redis")
    shutdown = int(directives(redis_conf(setups["prod"]))["shutdown-timeout"])
    assert pod_spec(statefulset)["terminationGracePeriodSeconds"] > shutdown
    assert "exec redis-server" in pod_spec(statefulset)["containers"][0]["args"][0], "redis-server must get SIGTERM"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_server_starts_from_the_rendered_command_and_config(setups, tmp_path):
    """The container's command (password on stdin), redis.conf and probe, run by the
    machine's redis-server: it starts, wants the password, answers the probe with it."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        pytest.skip("redis-server and redis-cli are not installed on this machine")
    rendered = setups["prod"]
    container = pod_spec(rendered.get("StatefulSet", "redis"))["containers"][0]
    port, data = free_port(), tmp_path / "data"
    data.mkdir()
    conf = redis_conf(rendered).replace("port 6379", f"port {port}").replace("dir /data", f"dir {data}")
    conf = conf.replace("bind * -::*", "bind 127.0.0.1")
    (tmp_path / "redis.conf").write_text(conf)
    script = container["args"][0].replace("/etc/redis/redis.conf", str(tmp_path / "redis.conf"))
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": PASSWORD}
    probe = container["readinessProbe"]["exec"]["command"]
    probe = [*probe[:-1], probe[-1].replace("-h 127.0.0.1", f"-h 127.0.0.1 -p {port}")]
    process = subprocess.Popen(
        [*container["command"], script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(probe, env=env, capture_output=True, check=False).returncode != 0:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the readiness probe never passed"
            time.sleep(0.1)
        unauthenticated = subprocess.run([cli, "-p", str(port), "ping"], capture_output=True, text=True, check=False)
        assert "NOAUTH" in unauthenticated.stdout + unauthenticated.stderr
        wrong = subprocess.run(probe, env={**env, "REDIS_PASSWORD": "wrong"}, capture_output=True, check=False)
        assert wrong.returncode != 0
        asked = subprocess.run(
            [cli, "-p", str(port), "config", "get", "appendfsync"],
            env={**env, "REDISCLI_AUTH": PASSWORD}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert asked.stdout.split() == ["appendfsync", "everysec"]
        process.terminate()  # what the kubelet sends: the AOF is fsynced and the server exits
        assert process.wait(timeout=10) == 0
        assert (data / "appendonlydir").is_dir()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- the wiring -----------------------------------------------------------------------


def test_every_app_container_uses_redis_with_the_secrets_password(setups):
    expected_url = {"dev": "redis://redis:6379/0", "prod": "redis://redis:6379/0", "prod-external": EXTERNAL_URL}
    for name, rendered in setups.items():
        seen = set()
        for workload, container in app_containers(rendered):
            where = f"{name}: {name_of(workload)}/{container['name']}"
            env = config_env(rendered, container)
            assert env.get("CATGA_TRANSPORT") == "redis", where
            assert env.get("REDIS_URL") == expected_url[name], where
            refs = {var["name"]: secret_key_ref(var) for var in container.get("env", [])}
            assert refs.get("REDIS_PASSWORD") == ("catga-secrets", "redis-password"), where
            seen.add(container["name"])
        assert seen == set(APP_CONTAINERS), name


def test_no_container_gets_a_setting_the_redis_transport_refuses(setups):
    """NATS credentials and JetStream replication: the Redis transport stops at start-up on them."""
    from apps.mediator.transports.redis.connection import NATS_ONLY

    refused = {key if key.startswith("NATS_") else f"CATGA_{key}" for key in NATS_ONLY}
    for name, rendered in setups.items():
        for workload in rendered.workloads():
            for container in containers(workload):
                wrong = env_names(rendered, container) & refused
                assert not wrong, f"{name}: {name_of(workload)}/{container['name']} gets {sorted(wrong)}"


def test_the_password_key_is_in_the_secret_the_containers_read(setups):
    for rendered in setups.values():
        for workload in rendered.workloads():
            for container in containers(workload):
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in rendered.get("Secret", ref["name"])["data"], (name_of(workload), ref)


# --- network policies -----------------------------------------------------------------


def admitted_on(rendered: Render, policy: dict, port: int) -> tuple[set[str], set[str]]:
    """(workloads, namespaces) that `policy`'s ingress rules admit on TCP `port`."""
    workloads, namespaces = set(), set()
    for rule in policy["spec"].get("ingress", []):
        if not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in rule.get("ports", [])):
            continue
        for peer in rule.get("from", []):
            if "podSelector" in peer and "namespaceSelector" not in peer:
                workloads |= {name_of(w) for w in rendered.workloads() if selects(peer["podSelector"], pod_labels(w))}
            if "namespaceSelector" in peer:
                namespaces |= set(peer["namespaceSelector"].get("matchLabels", {}).values())
    return workloads, namespaces


def test_only_the_app_pods_reach_redis_and_redis_reaches_nothing(setups):
    for name in ("dev", "prod"):
        rendered = setups[name]
        policy = rendered.get("NetworkPolicy", "redis")
        assert [name_of(w) for w in rendered.workloads() if selects(policy["spec"]["podSelector"], pod_labels(w))] == [
            "StatefulSet/redis"
        ]
        apps = {name_of(w) for w, _ in app_containers(rendered)}
        workloads, namespaces = admitted_on(rendered, policy, 6379)
        assert workloads == apps, name
        # KEDA's operator asks Redis for the lag when keda-redis is on, and only then.
        assert namespaces == ({"keda"} if "keda-redis" in SETUPS[name][1] else set()), name
        ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert ports == {6379}
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["egress"] == []


def test_with_networkpolicy_on_the_app_pods_may_open_connections_to_redis(setups):
    for name, rendered in setups.items():
        for workload, _ in app_containers(rendered):
            egress = [
                rule
                for policy in rendered.of_kind("NetworkPolicy")
                if "Egress" in policy["spec"]["policyTypes"]
                and selects(policy["spec"]["podSelector"], pod_labels(workload))
                for rule in policy["spec"].get("egress", [])
            ]
            assert any(6379 in [p.get("port") for p in rule.get("ports", [])] for rule in egress), (
                f"{name}: {name_of(workload)} cannot reach Redis past default-deny"
            )


# --- autoscaling ----------------------------------------------------------------------


def test_keda_scales_each_consumer_on_exactly_the_groups_it_reads(setups):
    """One trigger per (stream, group) the Redis transport provisions for the context."""
    from apps.mediator.runtime import get_registry
    from apps.mediator.transports.redis.topology import durables

    expected = {}
    for durable in durables(get_registry(), get_registry().contexts):
        for stream in durable.streams:
            expected.setdefault(f"catga-consumer-{durable.context}", set()).add((stream, durable.name))
    rendered = setups["prod"]
    consumers = {d["metadata"]["name"] for d in rendered.of_kind("Deployment") if d["metadata"]["name"] != "catga-web"}
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in rendered.of_kind("ScaledObject")}
    assert set(scaled) == consumers == set(expected)
    namespace = rendered.get("Service", "redis")["metadata"]["namespace"]
    for target, doc in scaled.items():
        triggers = doc["spec"]["triggers"]
        assert {(t["metadata"]["stream"], t["metadata"]["consumerGroup"]) for t in triggers} == expected[target]
        container = pod_spec(rendered.get("Deployment", target))["containers"][0]
        for trigger in triggers:
            metadata = trigger["metadata"]
            assert trigger["type"] == "redis-streams"
            assert set(metadata) <= REDIS_STREAMS_METADATA, set(metadata) - REDIS_STREAMS_METADATA
            assert metadata["address"] == f"redis.{namespace}.svc.cluster.local:6379"
            assert metadata["passwordFromEnv"] in {var["name"] for var in container["env"]}
            assert metadata["lagCount"].isdigit() and metadata["activationLagCount"].isdigit()


def test_keda_redis_and_keda_consumers_cannot_be_combined(tree):
    """Both scale the same Deployments: kustomize refuses the two ScaledObjects of one name."""
    target = setup_dir(tree, "prod", before=("keda-consumers",))
    with pytest.raises(RuntimeError, match="ScaledObject"):
        render(target)


# --- the policies the other renders are held to ---------------------------------------


@pytest.mark.parametrize(
    "check",
    [
        probe_violations,
        resource_violations,
        hardening_violations,
        selector_violations,
        target_port_violations,
        generated_reference_violations,
        env_expansion_violations,
        autoscaling_violations,
        metrics_discovery_violations,
    ],
    ids=lambda check: check.__name__.removesuffix("_violations"),
)
def test_the_shared_policies_hold(setups, check):
    found = [f"{name}: {message}" for name, rendered in setups.items() for message in check(rendered)]
    assert not found, "\n".join(found)


def test_the_app_pods_shut_down_within_their_grace_periods(setups):
    """grace_violations knows the app's, NATS's and PostgreSQL's budgets; Redis's is tested above."""
    for name, rendered in setups.items():
        docs = [
            copy.deepcopy(doc)
            for doc in rendered.docs
            if (doc["kind"], doc["metadata"]["name"]) != ("StatefulSet", "redis")
        ]
        found = grace_violations(Render(name, docs))
        assert not found, "\n".join(found)
