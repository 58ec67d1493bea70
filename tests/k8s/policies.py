"""The policies tests/k8s/test_policy.py holds every render to.

Each check is a function from one render to a list of violations (empty: the render
complies), so that a test can also show a check failing on a render that breaks its rule.
"""

import base64
import os
import re
import runpy
import subprocess
from unittest import mock

from tests.k8s.manifests import (
    LONG_RUNNING_KINDS,
    REPO,
    Render,
    config_env,
    containers,
    duration_seconds,
    exec_seconds,
    nats_role,
    pod_labels,
    pod_spec,
    selects,
    unhashed,
)

MEBIBYTE = 1024**2
MEMORY_ENVELOPE = (128 * MEBIBYTE, 512 * MEBIBYTE)  # the seed's envelope, provisional until RSS is measured
CONSUMER_DRAIN_SECONDS = 5  # flushing acks and closing the NATS connection after in-flight work
# From catga-secrets; the NATS credentials come from catga-nats-users, one key per container.
SECRET_KEYS_THE_APP_READS = {"DJANGO_SECRET_KEY", "DATABASE_URL"}
NATS_USERS_SECRET = "catga-nats-users"


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


def nats_config_files(rendered: Render) -> dict[str, str]:
    """The files of NATS's config volume (/etc/nats): nats.conf and what it includes."""
    statefulset = rendered.get("StatefulSet", "nats")
    volume = next(v for v in pod_spec(statefulset)["volumes"] if "configMap" in v)
    return rendered.get("ConfigMap", volume["configMap"]["name"])["data"]


def nats_conf(rendered: Render) -> str:
    return nats_config_files(rendered)["nats.conf"]


def env_names(rendered: Render, container: dict) -> set[str]:
    """Every variable a container gets: its own env, and the keys of the ConfigMaps and Secrets it reads whole."""
    names = set(config_env(rendered, container)) | {var["name"] for var in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            secret = rendered.get("Secret", source["secretRef"]["name"]) or {}
            names |= {source.get("prefix", "") + key for key in secret.get("data", {})}
    return names


def secret_key_ref(var: dict) -> tuple[str, str] | None:
    """(the Secret's name without its hash, the key) of a variable read from a Secret."""
    ref = var.get("valueFrom", {}).get("secretKeyRef")
    return (unhashed(ref["name"]), ref["key"]) if ref else None


def nats_credential_violations(rendered: Render) -> list[str]:
    """The web and each consumer connect to NATS as their own user, with their own password
    only; the migration Job and the init containers (PostgreSQL only) get no NATS
    credentials; no one gets a shared token; NATS gets every password permissions.conf names."""
    from apps.mediator.transports.nats.permissions import password_variable

    found = []
    nats = pod_spec(rendered.get("StatefulSet", "nats"))["containers"][0]
    referenced = set(re.findall(r"\$(NATS_PASSWORD_\w+)", "\n".join(nats_config_files(rendered).values())))
    missing = referenced - env_names(rendered, nats)
    if not referenced or missing:
        found.append(f"NATS's config reads the passwords {sorted(referenced)}, its pod lacks {sorted(missing)}")
    for workload in rendered.workloads():
        for container in containers(workload):
            where, names = f"{name_of(workload)}/{container['name']}", env_names(rendered, container)
            if "NATS_TOKEN" in names:
                found.append(f"{where} gets NATS_TOKEN: the settings refuse it beside NATS_USER")
            if workload["kind"] == "StatefulSet":  # NATS itself (above) and dev's PostgreSQL
                continue
            env = {var["name"]: var for var in container.get("env", [])}
            read = {ref[1] for var in env.values() if (ref := secret_key_ref(var)) and ref[0] == NATS_USERS_SECRET}
            if names & referenced:  # envFrom catga-nats-users, say
                found.append(f"{where} gets NATS's own variables {sorted(names & referenced)}")
            role = nats_role(container)
            if role is None:
                if read or names & {"NATS_USER", "NATS_PASSWORD", "CATGA_ROLE"}:
                    found.append(f"{where} does not connect to NATS but gets NATS credentials")
                continue
            user = {key: env.get(key, {}).get("value") for key in ("NATS_USER", "CATGA_ROLE")}
            if user != {"NATS_USER": role, "CATGA_ROLE": role}:
                found.append(f"{where} connects as {user}, expected the user and the role {role!r}")
            own = password_variable(role)
            if read != {own} or secret_key_ref(env.get("NATS_PASSWORD", {})) != (NATS_USERS_SECRET, own):
                found.append(f"{where} reads the NATS passwords {sorted(read)}, expected {own} as NATS_PASSWORD only")
    return found


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
    # JetStream reserves a stream's max_bytes up front: the dead-letter stream's must fit the store.
    from apps.mediator.core.conf import DEFAULTS

    number, unit = re.search(r"^\s*max_file_store:\s*(\d+)\s*([KMGT]B)\s*$", conf, re.M).groups()
    store = int(number) * 1024 ** ("KMGT".index(unit[0]) + 1)  # nats-server's KB, MB, GB are binary
    for workload in rendered.workloads():
        for container in containers(workload):
            env = config_env(rendered, container)
            stream_replicas = env.get("CATGA_STREAM_REPLICAS")
            if stream_replicas is not None and int(stream_replicas) != min(3, replicas):
                found.append(f"{name_of(workload)} asks for R{stream_replicas} streams on {replicas} NATS node(s)")
            dead_letters = int(env.get("CATGA_DLQ_MAX_BYTES", DEFAULTS["DLQ_MAX_BYTES"]))
            if stream_replicas is not None and dead_letters > store:
                found.append(f"{name_of(workload)} asks for a {dead_letters}-byte DLQ stream; NATS stores {store}")
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
    nats_credential_violations,
    keda_violations,
    metrics_discovery_violations,
]


def nats_pod_env(rendered: Render) -> dict[str, str]:
    """The NATS container's environment from its Secret and its plain values (SERVER_NAME: a pod name)."""
    container = pod_spec(rendered.get("StatefulSet", "nats"))["containers"][0]
    env = {}
    for source in container.get("envFrom", []):
        data = rendered.get("Secret", source["secretRef"]["name"])["data"]
        env |= {key: base64.b64decode(value).decode() for key, value in data.items()}
    return env | {"SERVER_NAME": "nats-0"}


def nats_server_test(nats_server, files: dict[str, str], env: dict, folder) -> subprocess.CompletedProcess:
    """`nats-server -t` on a NATS pod's config files, written to `folder` (its /etc/nats)."""
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    argv = [str(nats_server), "-c", str(folder / "nats.conf"), "-t"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
