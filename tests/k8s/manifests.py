"""Rendering the Kustomize overlays, and reading what they render (shared by tests/k8s).

The overlays' Secrets come from git-ignored files (`secret.env`, `nats-users.env`), so a
clean clone cannot render them as they are. The tests copy `k8s/` to a temporary
directory, write each overlay's secret files from their committed `.example`, and render
there; an overlay with extra components is a copy of the overlay directory whose
`components:` list is replaced, exactly what an operator does to switch one on.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
COMPONENTS = ("hpa-web", "hpa-consumers", "keda-consumers", "servicemonitor", "networkpolicy", "istio")
# Alternatives that must never be combined: both would autoscale the consumer Deployments.
EXCLUSIVE = (frozenset({"hpa-consumers", "keda-consumers"}),)
NAMESPACES = {"dev": "catga-dev", "prod": "catga"}
# The git-ignored file each overlay's secretGenerator reads, by the Secret it becomes.
SECRET_FILES = {"catga-secrets": "secret.env", "catga-nats-users": "nats-users.env"}

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
LONG_RUNNING_KINDS = ("Deployment", "StatefulSet")
GENERATED_SUFFIX = re.compile(r"-[a-z0-9]{10}$")  # kustomize's content hash
# libyaml's loader parses a render in a tenth of the pure-Python one's time.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Combo:
    """An overlay with a list of components; `components=None` means the overlay as committed."""

    overlay: str
    components: tuple[str, ...] | None = None

    @property
    def id(self) -> str:
        if self.components is None:
            return f"{self.overlay}(as committed)"
        return f"{self.overlay}+{'+'.join(self.components) or 'no-components'}"


def valid_combinations() -> list[Combo]:
    """Every overlay with every subset of the components that holds no exclusive pair."""
    combos = [Combo(overlay) for overlay in OVERLAYS]
    for overlay in OVERLAYS:
        for size in range(len(COMPONENTS) + 1):
            for subset in itertools.combinations(COMPONENTS, size):
                if any(pair <= set(subset) for pair in EXCLUSIVE):
                    continue
                combos.append(Combo(overlay, subset))
    return combos


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl (with its built-in kustomize) is not on PATH; CI needs it for tests/k8s")
        pytest.skip("kubectl is not installed; tests/k8s render with `kubectl kustomize`")
    return path


def prepare_tree(dest: Path, without: str | None = None) -> Path:
    """A copy of k8s/ with each overlay's secret files written from their committed examples
    (all but `without`)."""
    tree = dest / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns(*SECRET_FILES.values()))
    for overlay in OVERLAYS:
        for name in SECRET_FILES.values():
            if name != without:
                directory = tree / "overlays" / overlay
                shutil.copyfile(directory / f"{name}.example", directory / name)
    return tree


def secret_example(overlay: str, secret: str) -> dict[str, str]:
    """KEY=value lines of the committed example an overlay's Secret `secret` is generated from."""
    text = (K8S / "overlays" / overlay / f"{SECRET_FILES[secret]}.example").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def combo_dir(tree: Path, combo: Combo) -> Path:
    """The directory to render for `combo`, created next to the overlay it copies."""
    source = tree / "overlays" / combo.overlay
    if combo.components is None:
        return source
    digest = hashlib.sha1(combo.id.encode()).hexdigest()[:10]  # noqa: S324 (a directory name)
    target = tree / "overlays" / f"{combo.overlay}--{digest}"
    if not target.exists():
        shutil.copytree(source, target)
        kustomization = yaml.safe_load((target / "kustomization.yaml").read_text())
        kustomization["components"] = [f"../../components/{name}" for name in combo.components]
        (target / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return target


@dataclass
class Render:
    """The objects `kubectl kustomize` printed for one directory, with lookups the tests share."""

    label: str
    docs: list[dict]
    stderr: str = ""
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for doc in self.docs:
            self._index[(doc["kind"], doc["metadata"]["name"])] = doc

    def get(self, kind: str, name: str) -> dict | None:
        return self._index.get((kind, name))

    def of_kind(self, *kinds: str) -> list[dict]:
        return [doc for doc in self.docs if doc["kind"] in kinds]

    def workloads(self, kinds: tuple[str, ...] = WORKLOAD_KINDS) -> list[dict]:
        return self.of_kind(*kinds)

    def find(self, kind: str, prefix: str) -> dict | None:
        """The object of `kind` whose name is `prefix` plus kustomize's hash suffix (or exactly `prefix`)."""
        for doc in self.of_kind(kind):
            name = doc["metadata"]["name"]
            if name == prefix or (name.startswith(prefix) and GENERATED_SUFFIX.fullmatch(name[len(prefix) :])):
                return doc
        return None


def unhashed(name: str) -> str:
    """A generated ConfigMap's or Secret's name without kustomize's content hash."""
    return GENERATED_SUFFIX.sub("", name)


def render(path: Path, label: str | None = None) -> Render:
    result = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{result.stderr}")
    docs = [doc for doc in yaml.load_all(result.stdout, Loader=YAML_LOADER) if doc]
    return Render(label or str(path), docs, result.stderr)


# --- reading pod specs --------------------------------------------------------------


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers(workload: dict, *, init: bool = True) -> Iterator[dict]:
    spec = pod_spec(workload)
    if init:
        yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


# nats-server parses a variable's value as a config value, not as a string: a password that
# starts with a digit or `-` may read as a number (or fail to), `true` as a boolean, and the
# server stops. A letter, then at least 7 letters, digits, `-` or `_`, is always a string.
NATS_PASSWORD_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{7,}")


def nats_password() -> str:
    """A password as docs/operations.md makes them: a letter, then 48 hex digits."""
    return "n" + secrets.token_hex(24)


def nats_role(container: dict) -> str | None:
    """The NATS user a container must connect as: `web`, a consumer's context, or None (it
    does not connect: the migration Job and the init containers only talk to PostgreSQL)."""
    if container["name"] == "web":
        return "web"
    if container["name"] == "consumer":
        args = container["args"]
        return args[args.index("--context") + 1]
    return None


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a LabelSelector (matchLabels/matchExpressions, or a plain map) selects `labels`."""
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def config_env(rendered: Render, container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it from envFrom ConfigMaps and plain values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config = rendered.get("ConfigMap", source["configMapRef"]["name"])
            env.update((config or {}).get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def exec_seconds(command: list[str], flag: str) -> int:
    """The number of seconds in a hook command such as ["sleep", "5"] or ["pg_ctl", ..., "-t", "20"]."""
    if flag == "sleep":
        return int(command[command.index("sleep") + 1])
    text = " ".join(command)
    match = re.search(rf"{re.escape(flag)}\s+(\d+)", text)
    if not match:
        raise AssertionError(f"no {flag} N in {command}")
    return int(match.group(1))


def duration_seconds(value: str) -> int:
    """A Go duration from nats.conf ("10s", "2m", "1m30s") in whole seconds."""
    total = 0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h)", value):
        total += int(number) * {"ms": 0, "s": 1, "m": 60, "h": 3600}[unit]
    return total
