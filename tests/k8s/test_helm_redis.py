"""The Helm chart on the Redis Streams transport (`transport: redis`): what
k8s/components/redis, redis-external and keda-redis do to the overlays, the chart does
from values. Rendered and strictly linted by Helm's SDK (tests/k8s/helm_chart.py), held to
the overlays' policies and schemas, and compared object by object with the Kustomize
overlays plus those components (tests/k8s/test_redis_component.py's setups), but for the
differences listed in REDIS_DIFFERENCES, each with its reason.

The value sets live here rather than in ci/: test_helm.py holds ci/ to exactly the value
sets of helm_chart.VALUE_SETS, whose other tests (the kubelet run among them) need NATS.
"""

import copy
import re

import pytest
import yaml

from apps.mediator.runtime import get_registry
from apps.mediator.transports.redis.connection import NATS_ONLY
from apps.mediator.transports.redis.topology import durables
from tests.k8s.helm_chart import (
    CHART,
    HelmError,
    ValueSet,
    creates_secrets,
    lint_findings,
    lint_many,
    merge,
    overlay_secrets,
    render_many,
    values_of,
)
from tests.k8s.helm_equivalence import HOOK_COPIES, differences
from tests.k8s.manifests import K8S, Render, config_env, containers, pod_labels, pod_spec, prepare_tree, render, selects
from tests.k8s.policies import (
    CHECKS,
    env_names,
    grace_violations,
    keda_violations,
    name_of,
    nats_credential_violations,
    nats_violations,
    secret_key_ref,
)
from tests.k8s.test_redis_component import (
    EXTERNAL_URL,
    PASSWORD,
    REDIS_STREAMS_METADATA,
    directives,
    redis_conf,
    setup_dir,
)
from tests.k8s.test_schema import KUBERNETES_VERSIONS, problems

pytestmark = pytest.mark.k8s

APP_CONTAINERS = ("web", "consumer", "migrate")
CLUSTER_URL = "rediss+cluster://redis-0.cache.example.com:6380"
# The redis-cluster-streams trigger's parameters (KEDA docs, "Redis Streams" with a cluster).
REDIS_CLUSTER_STREAMS_METADATA = (
    REDIS_STREAMS_METADATA
    - {"address", "host", "port", "addressFromEnv", "hostFromEnv", "portFromEnv", "databaseIndex"}
) | {"addresses", "hosts", "ports", "addressesFromEnv", "hostsFromEnv", "portsFromEnv"}
# What the Redis transport refuses at start-up, as environment variables.
REFUSED = {key if key.startswith("NATS_") else f"CATGA_{key}" for key in NATS_ONLY}


def app_secrets(overlay: str) -> dict:
    """The overlay's example app Secret plus redis-password, as test_redis_component's setups make it."""
    app = overlay_secrets(overlay)["secrets"]["app"]
    return {"secrets": {"create": True, "app": {**app, "redis-password": PASSWORD}, "natsUsers": None}}


REDIS = {"transport": "redis"}
EXTERNAL = {"transport": "redis", "redis": {"enabled": False, "url": EXTERNAL_URL}}
VALUE_SETS = {
    value_set.id: value_set
    for value_set in (
        ValueSet(
            "redis-dev",
            ("ci/dev-values.yaml",),
            "catga-dev",
            merge(merge(REDIS, app_secrets("dev")), {"networkPolicy": {"enabled": True}}),
            about="dev with the chart's Redis and NetworkPolicies (components networkpolicy, redis)",
        ),
        ValueSet(
            "redis-prod",
            ("ci/prod-values.yaml",),
            overrides=merge(REDIS, app_secrets("prod")),
            about="prod with the chart's Redis and KEDA on the groups' lag (hpa-web, networkpolicy, redis, keda-redis)",
        ),
        ValueSet(
            "redis-external",
            ("ci/prod-values.yaml",),
            overrides=merge(merge(EXTERNAL, app_secrets("prod")), {"autoscaling": {"consumers": {"mode": "none"}}}),
            about="prod on an external Redis (hpa-web, networkpolicy, redis-external)",
        ),
        ValueSet(
            "redis-cluster-keda",
            ("ci/prod-values.yaml",),
            overrides=merge(merge(REDIS, app_secrets("prod")), {"redis": {"enabled": False, "url": CLUSTER_URL}}),
            about="prod on an external Redis Cluster over TLS, KEDA's cluster scaler",
        ),
        ValueSet(
            "redis-existing-secrets",
            overrides={"transport": "redis"},
            about="values.yaml with transport redis: the operator's catga-secrets, no catga-nats-users",
        ),
    )
}
# Each value set that has a Kustomize twin, and its setup in test_redis_component.
TWINS = {"redis-dev": "dev", "redis-prod": "prod", "redis-external": "prod-external"}
WITH_SECRETS = [key for key, value_set in VALUE_SETS.items() if creates_secrets(value_set)]

REDIS_DIFFERENCES = {
    "no NATS_URL": (
        "redis-external keeps the base's NATS_URL=nats://nats:4222 in catga-env (a component can only "
        "patch the overlay's generated ConfigMap, and the Redis transport ignores it); the chart "
        "derives catga-env from values and names no server that is not deployed."
    ),
    "no dead NATS egress": (
        "With networkpolicy, redis-external leaves web's and consumers' egress rule to the NATS pods "
        "on 4222, which then matches no pod; the chart renders its transport's rule only, in the "
        "place of NATS's (first)."
    ),
    "egress to the release's Redis pods": (
        "components/redis lets web, consumers and migrations reach 6379 at any address (it reuses "
        "redis-external's rule, written for a server outside the namespace); with redis.enabled the "
        "chart narrows it to the redis pods, as it does for its in-release NATS. With an external "
        "Redis (redis.url) both allow any address."
    ),
}


def as_chart_renders(kustomize: Render, in_release: bool) -> Render:
    """The Kustomize render with REDIS_DIFFERENCES applied, to compare with the chart's."""
    docs = copy.deepcopy(kustomize.docs)
    redis_pods = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}}}]
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("catga-env-"):
            doc["data"].pop("NATS_URL")
        if doc["kind"] == "NetworkPolicy" and doc["metadata"]["name"].startswith("catga-"):
            ports = lambda rule: [p["port"] for p in rule.get("ports", [])]  # noqa: E731
            egress = [rule for rule in doc["spec"]["egress"] if ports(rule) != [4222]]
            to_redis = [rule for rule in egress if ports(rule) == [6379]]
            assert len(to_redis) == 1, name_of(doc)
            if in_release:
                to_redis[0]["to"] = redis_pods
            if doc["metadata"]["name"] != "catga-migrate":
                egress = to_redis + [rule for rule in egress if rule is not to_redis[0]]
            doc["spec"]["egress"] = egress
    return Render(f"{kustomize.label} (as the chart renders it)", docs)


@pytest.fixture(scope="module")
def chart():
    results = render_many(list(VALUE_SETS.values()))
    failed = {key: str(value) for key, value in results.items() if isinstance(value, HelmError)}
    assert not failed, failed
    return results


@pytest.fixture(scope="module")
def kustomize(tmp_path_factory):
    tree = prepare_tree(tmp_path_factory.mktemp("helm-redis"))
    return {value_set_id: render(setup_dir(tree, setup), setup) for value_set_id, setup in TWINS.items()}


def app_containers(rendered: Render):
    for workload in rendered.workloads():
        for container in containers(workload, init=False):
            if container["name"] in APP_CONTAINERS:
                yield workload, container


# --- Helm itself ----------------------------------------------------------------------


@pytest.mark.parametrize("value_set_id", VALUE_SETS)
def test_strict_lint_passes(value_set_id):
    report = lint_many([VALUE_SETS[value_set_id]])[value_set_id]
    assert report["total_charts_linted"] == 1
    assert not lint_findings(report), lint_findings(report)


BAD_VALUES = {
    "an unknown transport": ({"transport": "kafka"}, "/transport"),
    "Redis with neither a server nor a url": ({"transport": "redis", "redis": {"enabled": False}}, "/redis"),
    "a url beside the release's Redis": (
        {"transport": "redis", "redis": {"url": "redis://elsewhere:6379/0"}},
        "/redis/url",
    ),
    "a password in the url": (
        {"transport": "redis", "redis": {"enabled": False, "url": "redis://:secret@r:6379/0"}},
        "/redis/url",
    ),
    "a url that is not Redis's": (
        {"transport": "redis", "redis": {"enabled": False, "url": "nats://n:4222"}},
        "/redis/url",
    ),
    "CATGA_TRANSPORT by hand": ({"config": {"env": {"CATGA_TRANSPORT": "redis"}}}, "/config/env/CATGA_TRANSPORT"),
    "REDIS_URL by hand": ({"config": {"env": {"REDIS_URL": "redis://r:6379/0"}}}, "/config/env/REDIS_URL"),
    "JetStream replicas on Redis": (
        {"transport": "redis", "config": {"env": {"CATGA_STREAM_REPLICAS": "3"}}},
        "/config/env/CATGA_STREAM_REPLICAS",
    ),
    "JetStream storage on Redis": (
        {"transport": "redis", "consumer": {"env": {"CATGA_STREAM_STORAGE": "memory"}}},
        "/consumer/env/CATGA_STREAM_STORAGE",
    ),
    "a NATS user on Redis": (
        {"transport": "redis", "contexts": {"orders": {"env": {"NATS_USER": "orders"}}}},
        "/contexts/orders/env/NATS_USER",
    ),
    "chart-made Secrets without redis-password": (
        {
            "transport": "redis",
            "secrets": {"create": True, "app": {"DJANGO_SECRET_KEY": "k", "DATABASE_URL": "postgres://h/d"}},
        },
        "redis-password",
    ),
    "a redis-password Redis's configuration cannot quote": (
        {
            "transport": "redis",
            "secrets": {
                "create": True,
                "app": {"DJANGO_SECRET_KEY": "k", "DATABASE_URL": "postgres://h/d", "redis-password": 'a"b c' * 4},
            },
        },
        "/secrets/app/redis-password",
    ),
    "a maxmemory Redis cannot read": ({"transport": "redis", "redis": {"maxmemory": "320Mi"}}, "/redis/maxmemory"),
    "KEDA on Redis without the publishers of evt": (
        {
            "transport": "redis",
            "autoscaling": {"consumers": {"mode": "keda"}},
            "contexts": {"shipping": {"durables": ["evt"]}},
        },
        "/contexts/shipping': missing property 'eventsFrom'",
    ),
}


def test_bad_redis_values_fail_install_and_lint_with_a_message_naming_them():
    value_sets = [ValueSet(re.sub(r"\W+", "-", case), overrides=values) for case, (values, _) in BAD_VALUES.items()]
    renders, lints = render_many(value_sets), lint_many(value_sets)
    for value_set, (case, (_, expected)) in zip(value_sets, BAD_VALUES.items(), strict=True):
        error = renders[value_set.id]
        assert isinstance(error, HelmError), f"{case}: rendered"
        assert expected in str(error), f"{case}: {error}"
        assert any(expected in finding for finding in lint_findings(lints[value_set.id])), f"{case}: lint passed"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(chart, version):
    errors = [
        f"{key}: {message}"
        for key, rendered in chart.items()
        for doc in rendered.docs
        for message in problems(doc, version)
    ]
    assert not errors, "\n".join(errors)


# --- the same objects as the overlays with the Redis components ------------------------


@pytest.mark.parametrize("value_set_id", TWINS)
def test_the_chart_renders_what_the_overlay_with_the_redis_components_renders(chart, kustomize, value_set_id):
    in_release = values_of(VALUE_SETS[value_set_id]).get("redis", {}).get("enabled", True)
    expected = as_chart_renders(kustomize[value_set_id], in_release)
    found = differences(expected, chart[value_set_id])
    assert not found, f"{len(found)} difference(s) from {TWINS[value_set_id]}:\n" + "\n".join(found[:60])
    kinds = {doc["kind"] for doc in chart[value_set_id].docs}
    assert {"Deployment", "Job", "NetworkPolicy"} <= kinds and len(chart[value_set_id].docs) >= 20


def test_the_documented_differences_are_all_there_is(kustomize, chart):
    """Without them the comparison fails, on exactly what they explain; each says why."""
    assert all(len(reason) > 60 for reason in REDIS_DIFFERENCES.values())
    found = "\n".join(differences(kustomize["redis-prod"], chart["redis-prod"]))
    assert "ConfigMap/catga-env.data.NATS_URL: only in kustomize" in found
    assert "NetworkPolicy/catga-web.spec.egress" in found and "NetworkPolicy/catga-migrate.spec.egress" in found
    assert "StatefulSet/redis" not in found and "ScaledObject" not in found


def test_the_chart_s_redis_conf_is_the_component_s():
    assert (CHART / "files" / "redis.conf").read_text() == (K8S / "components" / "redis" / "redis.conf").read_text()


# --- what the chart renders -------------------------------------------------------------


def test_no_nats_is_rendered_nor_its_users_secret_required(chart):
    for value_set_id, rendered in chart.items():
        leftovers = [name_of(doc) for doc in rendered.docs if doc["metadata"]["name"].startswith("nats")]
        assert not leftovers, f"{value_set_id}: {leftovers}"
        assert not [s for s in rendered.of_kind("Secret") if "nats" in s["metadata"]["name"]], value_set_id
        assert "catga-nats-users" not in rendered.notes and "nats-users.env" not in rendered.notes, value_set_id
    assert "redis-password" in chart["redis-existing-secrets"].notes


def test_the_release_runs_redis_only_without_a_url(chart):
    for value_set_id, rendered in chart.items():
        in_release = values_of(VALUE_SETS[value_set_id]).get("redis", {}).get("enabled", True)
        ours = [name_of(doc) for doc in rendered.docs if doc["metadata"]["name"].startswith("redis")]
        assert bool(ours) == in_release, (value_set_id, ours)


def test_redis_keeps_an_append_only_file_flushed_every_second_never_evicts_and_reads_its_password(chart):
    rendered = chart["redis-prod"]
    settings = directives(redis_conf(rendered))
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "noeviction" and settings["maxmemory"] == "320mb"
    assert "requirepass" not in settings
    container = pod_spec(rendered.get("StatefulSet", "redis"))["containers"][0]
    env = {var["name"]: var for var in container["env"]}
    assert secret_key_ref(env["REDIS_PASSWORD"]) == ("catga-secrets", "redis-password")
    assert 'requirepass "$REDIS_PASSWORD"' in container["args"][0] and "REDIS_PASSWORD" not in container["command"]
    assert "exec redis-server /etc/redis/redis.conf -" in container["args"][0]


def test_redis_maxmemory_follows_its_value():
    value_set = ValueSet("maxmemory", overrides={"transport": "redis", "redis": {"maxmemory": "700mb"}})
    rendered = render_many([value_set])["maxmemory"]
    settings = directives(redis_conf(rendered))
    assert settings["maxmemory"] == "700mb" and settings["maxmemory-policy"] == "noeviction"


def test_every_app_container_uses_redis_with_the_secrets_password(chart):
    for value_set_id, rendered in chart.items():
        values = values_of(VALUE_SETS[value_set_id])
        url = values.get("redis", {}).get("url") or "redis://redis:6379/0"
        seen = set()
        for workload, container in app_containers(rendered):
            where = f"{value_set_id}: {name_of(workload)}/{container['name']}"
            env = config_env(rendered, container)
            assert env.get("CATGA_TRANSPORT") == "redis" and env.get("REDIS_URL") == url, where
            secret, key = secret_key_ref(next(v for v in container["env"] if v["name"] == "REDIS_PASSWORD"))
            assert (HOOK_COPIES.get(secret, secret), key) == ("catga-secrets", "redis-password"), where
            seen.add(container["name"])
        assert seen == set(APP_CONTAINERS), value_set_id


def test_no_container_gets_a_setting_the_redis_transport_refuses(chart):
    for value_set_id, rendered in chart.items():
        for workload in rendered.workloads():
            for container in containers(workload):
                wrong = env_names(rendered, container) & REFUSED
                assert not wrong, f"{value_set_id}: {name_of(workload)}/{container['name']} gets {sorted(wrong)}"


def test_the_password_key_is_in_the_secret_the_containers_read(chart):
    for value_set_id in WITH_SECRETS:
        rendered = chart[value_set_id]
        for workload in rendered.workloads():
            for container in containers(workload):
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in rendered.get("Secret", ref["name"])["data"], (value_set_id, ref)


def test_existing_secrets_are_the_app_secret_alone(chart):
    rendered = chart["redis-existing-secrets"]
    assert not rendered.of_kind("Secret")
    read = {
        ref[0]
        for workload in rendered.workloads()
        for container in containers(workload)
        for ref in [secret_key_ref(var) for var in container.get("env", [])]
        + [(s["secretRef"]["name"], None) for s in container.get("envFrom", []) if "secretRef" in s]
        if ref
    }
    assert read == {"catga-secrets"}


def test_only_the_app_pods_and_keda_reach_redis_and_the_app_pods_may(chart):
    for value_set_id in ("redis-dev", "redis-prod"):
        rendered = chart[value_set_id]
        policy = rendered.get("NetworkPolicy", "redis")
        assert [name_of(w) for w in rendered.workloads() if selects(policy["spec"]["podSelector"], pod_labels(w))] == [
            "StatefulSet/redis"
        ]
        apps = {name_of(w) for w, _ in app_containers(rendered)}
        admitted, namespaces = set(), set()
        for rule in policy["spec"]["ingress"]:
            assert [p["port"] for p in rule["ports"]] == [6379]
            for peer in rule["from"]:
                if "podSelector" in peer:
                    admitted |= {
                        name_of(w) for w in rendered.workloads() if selects(peer["podSelector"], pod_labels(w))
                    }
                namespaces |= set(peer.get("namespaceSelector", {}).get("matchLabels", {}).values())
        assert admitted == apps, value_set_id
        keda = values_of(VALUE_SETS[value_set_id]).get("autoscaling", {}).get("consumers", {}).get("mode") == "keda"
        assert namespaces == ({"keda"} if keda else set()), value_set_id
        assert policy["spec"]["egress"] == []
    for value_set_id in ("redis-dev", "redis-prod", "redis-external"):
        rendered = chart[value_set_id]
        for workload, _ in app_containers(rendered):
            egress = [
                rule
                for policy in rendered.of_kind("NetworkPolicy")
                if "Egress" in policy["spec"]["policyTypes"]
                and selects(policy["spec"]["podSelector"], pod_labels(workload))
                for rule in policy["spec"].get("egress", [])
            ]
            ports = {p.get("port") for rule in egress for p in rule.get("ports", [])}
            assert 6379 in ports and 4222 not in ports, f"{value_set_id}: {name_of(workload)} {sorted(ports)}"


# --- autoscaling ----------------------------------------------------------------------


def expected_groups() -> dict[str, set[tuple[str, str]]]:
    expected: dict[str, set[tuple[str, str]]] = {}
    for durable in durables(get_registry(), get_registry().contexts):
        for stream in durable.streams:
            expected.setdefault(f"catga-consumer-{durable.context}", set()).add((stream, durable.name))
    return expected


def test_the_default_events_from_are_the_groups_the_transport_provisions():
    contexts = yaml.safe_load((CHART / "values.yaml").read_text())["contexts"]
    declared = {}
    for context, settings in contexts.items():
        groups = {(f"{{catga:{context}}}:cmd", f"{context}_cmd")} if "cmd" in settings["durables"] else set()
        if "evt" in settings["durables"]:
            groups |= {(f"{{catga:{publisher}}}:evt", f"{context}_evt") for publisher in settings["eventsFrom"]}
        declared[f"catga-consumer-{context}"] = groups
    assert declared == expected_groups()


@pytest.mark.parametrize(
    ("value_set_id", "scaler", "address", "tls"),
    [
        ("redis-prod", "redis-streams", "redis.catga.svc.cluster.local:6379", None),
        ("redis-cluster-keda", "redis-cluster-streams", "redis-0.cache.example.com:6380", "true"),
    ],
)
def test_keda_scales_each_consumer_on_exactly_the_groups_it_reads(chart, value_set_id, scaler, address, tls):
    rendered = chart[value_set_id]
    expected = expected_groups()
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in rendered.of_kind("ScaledObject")}
    assert set(scaled) == set(expected)
    allowed = REDIS_STREAMS_METADATA if scaler == "redis-streams" else REDIS_CLUSTER_STREAMS_METADATA
    for target, doc in scaled.items():
        triggers = doc["spec"]["triggers"]
        assert {(t["metadata"]["stream"], t["metadata"]["consumerGroup"]) for t in triggers} == expected[target]
        container = pod_spec(rendered.get("Deployment", target))["containers"][0]
        for trigger in triggers:
            metadata = trigger["metadata"]
            assert trigger["type"] == scaler
            assert set(metadata) <= allowed, set(metadata) - allowed
            assert metadata.get("address", metadata.get("addresses")) == address
            assert metadata["passwordFromEnv"] in {var["name"] for var in container["env"]}
            assert metadata.get("enableTLS") == tls
            assert metadata["lagCount"].isdigit() and metadata["activationLagCount"].isdigit()


# --- the policies the other renders are held to ---------------------------------------

# The in-cluster NATS's checks have nothing to look at; grace_violations knows no budget for
# Redis, whose own is checked below (as in test_redis_component).
NATS_CHECKS = {nats_violations, nats_credential_violations, keda_violations, grace_violations}


@pytest.mark.parametrize("value_set_id", WITH_SECRETS)
def test_the_policies_of_the_overlays_hold(chart, value_set_id):
    rendered = chart[value_set_id]
    found = [
        f"{check.__name__}: {message}" for check in CHECKS if check not in NATS_CHECKS for message in check(rendered)
    ]
    without_redis = Render(rendered.label, [d for d in rendered.docs if name_of(d) != "StatefulSet/redis"])
    found += [f"grace_violations: {message}" for message in grace_violations(without_redis)]
    assert not found, "\n".join(found[:40])


def test_redis_shuts_down_within_its_grace_period(chart):
    rendered = chart["redis-prod"]
    shutdown = int(directives(redis_conf(rendered))["shutdown-timeout"])
    assert pod_spec(rendered.get("StatefulSet", "redis"))["terminationGracePeriodSeconds"] > shutdown


def test_the_nats_default_is_unchanged_by_the_redis_values():
    """transport: nats (the default) with a redis: block set renders NATS and no Redis."""
    value_set = ValueSet("nats-with-redis-block", overrides={"redis": {"enabled": False, "url": EXTERNAL_URL}})
    rendered = render_many([value_set])[value_set.id]
    assert rendered.get("StatefulSet", "nats") and not rendered.get("StatefulSet", "redis")
    env = rendered.find("ConfigMap", "catga-env")["data"]
    assert env["CATGA_TRANSPORT"] == "nats" and "REDIS_URL" not in env and "NATS_URL" in env
