"""The GitHub workflows: valid, the CI job is the local CI, the deploy job matches the overlays."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import K8S, NAMESPACES, OVERLAYS, REPO, containers

pytestmark = pytest.mark.k8s

WORKFLOWS = REPO / ".github" / "workflows"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def script(workflow: dict, job: str) -> str:
    return "\n".join(step.get("run", "") for step in workflow["jobs"][job]["steps"])


@pytest.mark.parametrize("schema", ["vendor.github-workflows", "custom.github-workflows-require-timeout"])
def test_workflows_match_the_github_workflow_schema(schema):
    checker = Path(sys.executable).parent / "check-jsonschema"
    files = sorted(str(path) for path in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2
    result = subprocess.run(
        [str(checker), "--builtin-schema", schema, *files], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_same_entry_point_as_local_ci():
    ci = load("ci.yml")
    assert "bash .ci/run" in script(ci, "test")
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_deploy_pins_the_pushed_digest_on_the_image_name_the_base_uses(committed):
    deploy = load("deploy.yml")
    run = script(deploy, "deploy")
    match = re.search(r'kustomize edit set image "(\w[\w-]*)=\$\{IMAGE\}@\$\{DIGEST\}"', run)
    assert match, "the deploy pins the image by digest"
    image_names = {
        c["image"].split(":")[0] for w in committed["prod"].workloads() for c in containers(w) if c["name"] == "web"
    }
    base = (K8S / "base" / "web" / "deployment.yaml").read_text()
    assert f"image: {match.group(1)}\n" in base and len(image_names) == 1


def test_deploy_targets_the_overlays_and_their_namespaces():
    env = load("deploy.yml")["jobs"]["deploy"]["env"]
    overlays = re.findall(r"'(\w+)'", env["OVERLAY"])
    namespaces = re.findall(r"'([\w-]+)'", env["NAMESPACE"])
    assert sorted(overlays) == sorted(OVERLAYS)
    assert dict(zip(overlays, namespaces, strict=True)) == NAMESPACES


def test_deploy_replaces_the_migration_job_then_waits_for_it_and_every_rollout(committed):
    run = script(load("deploy.yml"), "deploy")
    delete, apply = run.index("delete job catga-migrate"), run.index("kubectl apply -f rendered.yaml")
    assert delete < apply < run.index("wait --for=condition=complete job/catga-migrate")
    selector = re.search(r"rollout status deployment -l ([\w./-]+)=([\w-]+)", run)
    assert selector, "the deploy waits for the Deployments"
    key, value = selector.groups()
    prod = committed["prod"]
    assert all(d["metadata"]["labels"].get(key) == value for d in prod.of_kind("Deployment"))
    for statefulset in prod.of_kind("StatefulSet"):
        assert f"rollout status statefulset/{statefulset['metadata']['name']}" in run
