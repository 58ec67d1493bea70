"""Every overlay, alone and with every valid set of components, renders cleanly."""

import subprocess

import pytest

from apps.mediator.runtime import contexts
from tests.k8s.manifests import (
    COMPONENTS,
    K8S,
    NAMESPACES,
    OVERLAYS,
    SECRET_FILES,
    Combo,
    kubectl,
    prepare_tree,
    render,
    valid_combinations,
)

pytestmark = pytest.mark.k8s


def test_every_overlay_and_component_combination_renders_without_warnings(renders):
    # 2 overlays x (2**6 subsets - 16 holding both consumer autoscalers) + the 2 as committed.
    assert len(renders) == len(valid_combinations()) == 2 * (2 ** len(COMPONENTS) - 16) + 2
    noisy = {combo.id: rendered.stderr for combo, rendered in renders.items() if rendered.stderr.strip()}
    assert not noisy, f"kustomize warned: {noisy}"
    assert all(rendered.docs for rendered in renders.values())


def test_each_component_adds_what_it_is_for(renders):
    def kinds(overlay, *components):
        return {(doc["kind"], doc["metadata"]["name"]) for doc in renders[Combo(overlay, components)].docs}

    for overlay in OVERLAYS:
        bare = kinds(overlay)
        assert kinds(overlay, "hpa-web") - bare == {("HorizontalPodAutoscaler", "catga-web")}
        consumers = {f"catga-consumer-{context}" for context in contexts()}
        assert kinds(overlay, "hpa-consumers") - bare == {("HorizontalPodAutoscaler", name) for name in consumers}
        assert kinds(overlay, "keda-consumers") - bare == {("ScaledObject", name) for name in consumers}
        assert kinds(overlay, "servicemonitor") - bare == {
            ("ServiceMonitor", "catga-web"),
            ("PodMonitor", "catga-consumers"),
        }
        assert kinds(overlay, "istio") - bare == {("VirtualService", "catga-web"), ("DestinationRule", "catga-web")}
        assert {kind for kind, _ in kinds(overlay, "networkpolicy") - bare} == {"NetworkPolicy"}


@pytest.mark.parametrize("missing", SECRET_FILES.values())
def test_an_overlay_without_one_of_its_secret_files_refuses_to_render(tmp_path, missing):
    """The example secrets are never deployed by accident: no secret.env (or nats-users.env), no manifests."""
    tree = prepare_tree(tmp_path, without=missing)
    for overlay in OVERLAYS:
        result = subprocess.run(
            [kubectl(), "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0
        assert missing in result.stderr


def test_the_base_renders_on_its_own_without_a_namespace_or_secret():
    rendered = render(K8S / "base")
    assert not rendered.stderr.strip()
    assert all("namespace" not in doc["metadata"] for doc in rendered.docs)
    assert not rendered.of_kind("Secret"), (
        "secrets belong to the overlays (secret.env, nats-users.env), never to the base"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_put_everything_in_their_namespace_with_the_restricted_pod_security_profile(renders, overlay):
    namespace = NAMESPACES[overlay]
    for combo, rendered in renders.items():
        if combo.overlay != overlay:
            continue
        namespaces = rendered.of_kind("Namespace")
        assert [doc["metadata"]["name"] for doc in namespaces] == [namespace], combo.id
        assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        misplaced = [
            f"{doc['kind']}/{doc['metadata']['name']}"
            for doc in rendered.docs
            if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != namespace
        ]
        assert not misplaced, f"{combo.id}: outside {namespace}: {misplaced}"
