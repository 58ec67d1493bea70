"""Rendering and linting the Helm chart k8s/helm/catga through Helm's own Go SDK.

The SDK (helm-python-sdk, alpha) lives in a virtualenv of its own ($(VENV)/helm, from
requirements/k8s-helm.txt), as checkov does: this module layers the values files the way
`helm install -f a.yaml -f b.yaml` does and hands them, as JSON, to tests/k8s/helm_render.py
running under that virtualenv's interpreter. What comes back is a manifests.Render, so the
chart's output goes through the same policies, schemas and checkov as the overlays'.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import REPO, YAML_LOADER, Render, nats_password, secret_example

CHART = REPO / "k8s" / "helm" / "catga"
RENDER_SCRIPT = Path(__file__).with_name("helm_render.py")
RELEASE = "catga"
NOTES = "templates/NOTES.txt"
SEVERITY_WARNING = 2  # lint messages: 1 info, 2 warning, 3 error


@dataclass(frozen=True)
class ValueSet:
    """Values files layered on the chart's defaults (`-f` in order), then `overrides`."""

    id: str
    files: tuple[str, ...] = ()
    namespace: str = "catga"
    overrides: dict = field(default_factory=dict, hash=False, compare=False)
    # What it switches on, for the reader of the test ids and the report.
    about: str = ""


def overlay_secrets(overlay: str) -> dict:
    """secrets.create with the overlay's committed examples (prod's are blank: made up here,
    with the keys the examples name), so the chart renders the Secrets Kustomize generates."""
    app = secret_example(overlay, "catga-secrets")
    users = secret_example(overlay, "catga-nats-users")
    if overlay == "prod":
        app = {key: value or "prod-test-secret-key" for key, value in app.items()}
        users = {key: nats_password() for key in users}
    return {"secrets": {"create": True, "app": app, "natsUsers": users}}


VALUE_SETS = (
    ValueSet("default", about="values.yaml alone: dev-sized, existing Secrets, migrations as a hook"),
    ValueSet("dev", ("ci/dev-values.yaml",), "catga-dev", about="the dev overlay: PostgreSQL, one NATS node"),
    ValueSet(
        "prod",
        ("ci/prod-values.yaml",),
        about="the prod overlay: 3 replicas, 3-node NATS, HPA web, KEDA consumers, NetworkPolicies",
    ),
    ValueSet(
        "prod-hpa-monitoring-istio",
        ("ci/prod-values.yaml", "ci/hpa-monitoring-istio-values.yaml"),
        about="prod with HPA consumers, ServiceMonitor/PodMonitor and Istio",
    ),
    ValueSet(
        "external-nats",
        ("ci/external-nats-values.yaml",),
        about="no NATS in the release: nats.url, KEDA on its monitoring endpoint, NetworkPolicies",
    ),
)
VALUE_SET = {value_set.id: value_set for value_set in VALUE_SETS}


def helm_python() -> str:
    """The interpreter of the helm virtualenv; in CI its absence fails the tests, as checkov's does."""
    candidates = [os.environ.get("HELM_PYTHON"), str(Path(sys.prefix) / "helm" / "bin" / "python")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    message = "helm-python-sdk is not installed: `make test` puts it in $(VENV)/helm (requirements/k8s-helm.txt)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def merge(base: dict, layer: dict) -> dict:
    """Helm's coalescing of a values file over another: maps merge, a null deletes the key."""
    merged = copy.deepcopy(base)
    for key, value in layer.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def values_of(value_set: ValueSet, chart: Path = CHART) -> dict:
    """The user-supplied values of a set (the chart's own values.yaml is Helm's to apply)."""
    values: dict = {}
    for name in value_set.files:
        values = merge(values, yaml.safe_load((chart / name).read_text()) or {})
    return merge(values, value_set.overrides)


def call(request: dict) -> dict:
    result = subprocess.run(
        [helm_python(), str(RENDER_SCRIPT)], input=json.dumps(request), capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm_render.py failed:\n{result.stderr}")
    return json.loads(result.stdout)


@dataclass
class ChartRender(Render):
    """A Render of the chart, with its NOTES.txt beside the objects."""

    notes: str = ""


def to_render(label: str, manifests: dict[str, str]) -> ChartRender:
    docs, notes = [], ""
    for template, text in sorted(manifests.items()):
        if template.endswith(NOTES):
            notes = text
            continue
        docs.extend(doc for doc in yaml.load_all(text, Loader=YAML_LOADER) if doc)
    return ChartRender(label, docs, notes=notes)


class HelmError(Exception):
    """Helm refused to render (a schema violation, a `fail` or `required` in a template)."""


def render_many(value_sets: list[ValueSet], chart: Path = CHART) -> dict[str, ChartRender | HelmError]:
    """One SDK call for all of them: loading the Go library is the slow part."""
    answer = call(
        {
            "chart": str(chart),
            "renders": [
                {"id": v.id, "values": values_of(v, chart), "name": RELEASE, "namespace": v.namespace}
                for v in value_sets
            ],
        }
    )
    results: dict[str, ChartRender | HelmError] = {}
    for value_set in value_sets:
        item = answer["renders"][value_set.id]
        results[value_set.id] = (
            HelmError(item["error"]) if "error" in item else to_render(f"helm:{value_set.id}", item["manifests"])
        )
    return results


def render_chart(value_set: ValueSet, chart: Path = CHART) -> ChartRender:
    result = render_many([value_set], chart)[value_set.id]
    if isinstance(result, HelmError):
        raise result
    return result


def lint_many(value_sets: list[ValueSet], chart: Path = CHART) -> dict[str, dict]:
    """`helm lint --strict` of each value set: {"messages": [...], "errors": [...]}."""
    answer = call(
        {
            "chart": str(chart),
            "lints": [{"id": v.id, "values": values_of(v, chart), "namespace": v.namespace} for v in value_sets],
        }
    )
    return answer["lints"]


def lint_findings(report: dict) -> list[str]:
    """Warnings and errors of a strict lint (info, such as "icon is recommended", is not one)."""
    messages = [f"{m['path']}: {m['error'].strip()}" for m in report["messages"] if m["severity"] >= SEVERITY_WARNING]
    return messages + [error.strip() for error in report["errors"] if error.strip() not in str(messages)]


def with_secrets(value_set: ValueSet, overlay: str) -> ValueSet:
    """The set with secrets.create and the overlay's example Secrets (see overlay_secrets)."""
    return ValueSet(
        f"{value_set.id}+secrets",
        value_set.files,
        value_set.namespace,
        merge(value_set.overrides, overlay_secrets(overlay)),
        value_set.about,
    )


def creates_secrets(value_set: ValueSet) -> bool:
    return bool(values_of(value_set).get("secrets", {}).get("create"))


# --- what the test modules' fixtures render -------------------------------------------


def render_value_sets() -> dict[str, ChartRender]:
    """Every value set rendered by the Helm SDK as `helm install` would."""
    results = render_many(list(VALUE_SETS))
    failed = {key: str(value) for key, value in results.items() if isinstance(value, HelmError)}
    assert not failed, failed
    return results


def render_value_sets_with_secrets() -> dict[str, ChartRender]:
    """Every value set, the ones that expect existing Secrets given them by the chart instead
    (secrets.create), so that the policies see every object a pod reads."""
    value_sets = [
        v if creates_secrets(v) else with_secrets(v, "dev" if v.namespace == "catga-dev" else "prod")
        for v in VALUE_SETS
    ]
    results = render_many(value_sets)
    failed = {key: str(value) for key, value in results.items() if isinstance(value, HelmError)}
    assert not failed, failed
    return {value_set.id: results[with_id.id] for value_set, with_id in zip(VALUE_SETS, value_sets, strict=True)}
