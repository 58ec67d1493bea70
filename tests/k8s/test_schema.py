"""Every rendered object validates against its schema, for the oldest and newest Kubernetes.

Built-in kinds use kubernetes-validate's strict schemas (unknown fields are errors).
The custom resources of k8s/components are listed in CRD_SCHEMAS and checked against
tests/k8s/crd_schemas; any other kind is an error, not a warning.
"""

import copy
import json
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, all_versions, latest_version

pytestmark = pytest.mark.k8s

SCHEMA_DIR = Path(__file__).parent / "crd_schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.yaml",
    ("networking.istio.io/v1", "VirtualService"): "networking.istio.io_v1_virtualservice.yaml",
    ("networking.istio.io/v1", "DestinationRule"): "networking.istio.io_v1_destinationrule.yaml",
}
KUBERNETES_VERSIONS = (all_versions()[0], latest_version())  # 1.25.0 and 1.37.0 with kubernetes-validate 1.37.0


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = yaml.safe_load((SCHEMA_DIR / CRD_SCHEMAS[(api_version, kind)]).read_text())
    schema["$defs"] = yaml.safe_load((SCHEMA_DIR / "_common.yaml").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def problems(doc: dict, version: str) -> list[str]:
    """Why `doc` is invalid for Kubernetes `version` (empty when it is valid)."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except ValidationError as error:
        return [f"{name} (k8s {version}) at {'.'.join(map(str, error.path))}: {error.message}"]
    except SchemaNotFoundError:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in CRD_SCHEMAS:
            return [f"{name}: {key} is neither a Kubernetes {version} kind nor a listed custom resource"]
        return [
            f"{name} ({key[0]}) at {'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in crd_validator(*key).iter_errors(doc)
        ]
    return []


def unique_documents(renders) -> list[dict]:
    """Each distinct object once: most combinations share most objects."""
    seen = {}
    for rendered in renders.values():
        for doc in rendered.docs:
            seen.setdefault(json.dumps(doc, sort_keys=True), doc)
    return list(seen.values())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_validates_strictly(renders, version):
    docs = unique_documents(renders)
    errors = [message for doc in docs for message in problems(doc, version)]
    assert not errors, "\n".join(errors)
    assert {doc["kind"] for doc in docs} >= {kind for _, kind in CRD_SCHEMAS}, "every listed CRD is exercised"


def test_the_oldest_and_newest_supported_versions_differ():
    assert KUBERNETES_VERSIONS[0].startswith("1.25")
    assert tuple(map(int, KUBERNETES_VERSIONS[1].split(".")[:2])) >= (1, 37)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_a_misspelt_field_is_caught(committed, version):
    """The validation is strict: a field the API server would silently drop is an error here."""
    web = copy.deepcopy(committed["prod"].get("Deployment", "catga-web"))
    web["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert problems(web, version)

    scaled = copy.deepcopy(committed["prod"].get("ScaledObject", "catga-consumer-orders"))
    scaled["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "10"
    assert any("lagTreshold" in message for message in problems(scaled, version))


def test_an_unlisted_kind_is_an_error_not_a_warning():
    ingress_route = {"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute", "metadata": {"name": "x"}}
    assert problems(ingress_route, KUBERNETES_VERSIONS[1])


def test_each_crd_schema_is_a_valid_json_schema():
    for api_version, kind in CRD_SCHEMAS:
        crd_validator(api_version, kind)  # check_schema raises on a malformed schema
