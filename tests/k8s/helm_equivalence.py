"""What "the chart deploys what the overlay deploys" means, object by object.

`differences(kustomize, helm)` normalises both renders and lists every path where they
part. The normalisation is the list of deliberate differences below, each with its reason;
anything else that differs (a kind, a name, a container, a command, an env var, a probe, a
resource, a security context, a selector, a port, a ConfigMap's data...) is reported.
"""

from __future__ import annotations

import copy

from tests.k8s.manifests import Render, containers, pod_spec, unhashed

# Labels Helm adds to every object's metadata (never to pod templates or selectors).
HELM_LABELS = ("app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "helm.sh/chart")
HOOK_ANNOTATIONS = {
    "helm.sh/hook": "pre-install,pre-upgrade",
    "helm.sh/hook-weight": "0",
    "helm.sh/hook-delete-policy": "before-hook-creation",
}
ARGO_ANNOTATIONS = {
    "argocd.argoproj.io/hook": "PreSync",
    "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation",
}
# The migration hook's own copies of what its Job reads, by the object they copy.
HOOK_COPIES = {
    "catga-migrate-env": "catga-env",
    "catga-migrate-files": "catga-files",
    "catga-migrate-secrets": "catga-secrets",
}

DELIBERATE = {
    "namespace": (
        "Kustomize renders the Namespace (with Pod Security 'restricted' labels); a chart installs "
        "into `--namespace` (`--create-namespace`) and does not own it, so its labels are the "
        "operator's: `kubectl label ns <ns> pod-security.kubernetes.io/enforce=restricted`."
    ),
    "helm labels": (
        "Helm's own labels (managed-by, instance, helm.sh/chart) on every object's metadata, and "
        "app.kubernetes.io/part-of on all of them where Kustomize puts it on the base's only: "
        "compared on pod templates and selectors, ignored on object metadata."
    ),
    "content hashes": (
        "Both name generated ConfigMaps and Secrets with a 10-character content hash, computed "
        "differently (Kustomize's own encoding, the chart's sha256): compared without it."
    ),
    "migration hook": (
        "With migrate.hook (prod) the Job is a Helm pre-install/pre-upgrade hook instead of carrying "
        "Argo CD's PreSync annotations (Argo CD maps Helm hooks itself); it runs before the release's "
        "other objects exist, so it brings its own ServiceAccount catga-migrate and hook copies of "
        "catga-env, catga-files (and catga-secrets when the chart makes it), which must equal them."
    ),
    "secret values": (
        "Secrets are compared by name, type and keys: the values are the operator's (prod's "
        "examples are blank; the test fills them in)."
    ),
    "nats.conf comments": "nats.conf is rendered from values: compared line by line without comments and blank lines.",
}


def _strip_comments(text: str) -> str:
    lines = (line.split("#", 1)[0].rstrip() if not line.lstrip().startswith("#") else "" for line in text.splitlines())
    return "\n".join(line for line in lines if line.strip())


def _unhash_refs(doc: dict, rename: dict[str, str]) -> None:
    """Generated names in a workload's pod template, without their hash (and hook copies renamed)."""

    def fix(name: str) -> str:
        base = unhashed(name)
        return rename.get(base, base)

    spec = pod_spec(doc)
    for container in containers(doc):
        for source in container.get("envFrom", []):
            for key in ("configMapRef", "secretRef"):
                if key in source:
                    source[key]["name"] = fix(source[key]["name"])
        for var in container.get("env", []):
            for key in ("configMapKeyRef", "secretKeyRef"):
                if key in var.get("valueFrom", {}):
                    var["valueFrom"][key]["name"] = fix(var["valueFrom"][key]["name"])
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            volume["configMap"]["name"] = fix(volume["configMap"]["name"])
        if "secret" in volume:
            volume["secret"]["secretName"] = fix(volume["secret"]["secretName"])


def normalise(rendered: Render, *, helm: bool) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """(kind, name) -> the object as compared; plus what the normalisation itself found wrong
    (a hook copy that does not equal what it copies, an unexpected annotation)."""
    problems: list[str] = []
    objects: dict[tuple[str, str], dict] = {}
    hook_copies: dict[str, dict] = {}
    for original in rendered.docs:
        doc = copy.deepcopy(original)
        kind, metadata = doc["kind"], doc["metadata"]
        if kind == "Namespace" and not helm:
            continue
        labels = metadata.get("labels", {})
        for key in (*HELM_LABELS, "app.kubernetes.io/part-of"):
            labels.pop(key, None)
        if not labels:
            metadata.pop("labels", None)
        if kind in ("ConfigMap", "Secret"):
            metadata["name"] = unhashed(metadata["name"])
            if kind == "Secret":
                doc["data"] = sorted(doc.get("data", {}))
            if "nats.conf" in doc.get("data", {}):
                doc["data"]["nats.conf"] = _strip_comments(doc["data"]["nats.conf"])
        annotations = metadata.get("annotations", {})
        if helm and annotations.get("helm.sh/hook") and kind != "Job":
            if metadata["name"] in HOOK_COPIES:
                metadata.pop("annotations")
                hook_copies[metadata["name"]] = doc
            elif (kind, metadata["name"]) != ("ServiceAccount", "catga-migrate"):
                problems.append(f"unexpected hook {kind}/{metadata['name']}")
            continue
        if kind in ("Deployment", "StatefulSet", "Job"):
            _unhash_refs(doc, HOOK_COPIES if helm else {})
            template = doc["spec"]["template"]["metadata"]
            if template.get("annotations") == {}:  # what Kustomize leaves of removed annotations
                del template["annotations"]
        if helm and kind == "Job" and annotations.get("helm.sh/hook"):
            if annotations != HOOK_ANNOTATIONS:
                problems.append(f"Job/{metadata['name']} hook annotations {annotations}, expected {HOOK_ANNOTATIONS}")
            metadata["annotations"] = dict(ARGO_ANNOTATIONS)
            spec = pod_spec(doc)
            if spec.get("serviceAccountName") != "catga-migrate":
                problems.append(f"the migration hook runs as {spec.get('serviceAccountName')}, not catga-migrate")
            spec["serviceAccountName"] = "catga"
        objects[(kind, metadata["name"])] = doc
    for name, hook_copy in hook_copies.items():
        copied = objects.get((hook_copy["kind"], HOOK_COPIES[name]))
        if copied is None or {k: v for k, v in copied.items() if k != "metadata"} != {
            k: v for k, v in hook_copy.items() if k != "metadata"
        }:
            problems.append(f"the hook's {hook_copy['kind']}/{name} does not equal {HOOK_COPIES[name]}")
    return objects, problems


def _diff(path: str, left, right, found: list[str]) -> None:
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right), key=str):
            where = f"{path}.{key}"
            if key not in right:
                found.append(f"{where}: only in kustomize ({left[key]!r:.120})")
            elif key not in left:
                found.append(f"{where}: only in helm ({right[key]!r:.120})")
            else:
                _diff(where, left[key], right[key], found)
    elif isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            _diff(f"{path}[{index}]", a, b, found)
    elif left != right:
        found.append(f"{path}: kustomize {left!r:.200} != helm {right!r:.200}")


def differences(kustomize: Render, helm: Render) -> list[str]:
    """Every difference between the two renders that DELIBERATE does not explain."""
    left, found = normalise(kustomize, helm=False)
    right, problems = normalise(helm, helm=True)
    found = list(found) + problems
    for key in sorted(set(left) - set(right)):
        found.append(f"{key[0]}/{key[1]}: rendered by kustomize only")
    for key in sorted(set(right) - set(left)):
        found.append(f"{key[0]}/{key[1]}: rendered by helm only")
    for key in sorted(set(left) & set(right)):
        _diff(f"{key[0]}/{key[1]}", left[key], right[key], found)
    return found
