"""The chart with values matching an overlay renders what `kubectl kustomize` renders for it:
the same objects (kinds, names), containers, commands, env, probes, resources, security
contexts, selectors, ports and configuration, but for the deliberate differences listed in
tests/k8s/helm_equivalence.py (DELIBERATE), each with its reason."""

import copy
import shutil

import pytest

from tests.k8s.helm_chart import CHART, VALUE_SET, ValueSet, overlay_secrets, render_chart, render_many
from tests.k8s.helm_equivalence import DELIBERATE, differences
from tests.k8s.manifests import Combo, combo_dir, prepare_tree, render

pytestmark = pytest.mark.k8s

# Each chart value set and the Kustomize directory it must equal: the overlays as committed,
# and prod with the components ci/hpa-monitoring-istio-values.yaml switches on.
PAIRS = {
    "dev": Combo("dev"),
    "prod": Combo("prod"),
    "prod-hpa-monitoring-istio": Combo(
        "prod", ("hpa-web", "hpa-consumers", "servicemonitor", "networkpolicy", "istio")
    ),
}


def as_overlay(value_set: ValueSet, overlay: str) -> ValueSet:
    """The value set with the chart making the Secrets, as the overlay's secretGenerator does."""
    if value_set.id == "dev":  # ci/dev-values.yaml carries dev's example secrets itself
        return value_set
    return ValueSet(value_set.id, value_set.files, value_set.namespace, overlay_secrets(overlay))


@pytest.fixture(scope="module")
def kustomize_tree(tmp_path_factory):
    return prepare_tree(tmp_path_factory.mktemp("helm-equivalence"))


@pytest.fixture(scope="module")
def kustomize(kustomize_tree):
    return {value_set_id: render(combo_dir(kustomize_tree, combo), combo.id) for value_set_id, combo in PAIRS.items()}


@pytest.fixture(scope="module")
def helm():
    value_sets = [as_overlay(VALUE_SET[value_set_id], combo.overlay) for value_set_id, combo in PAIRS.items()]
    return render_many(value_sets)


@pytest.mark.parametrize("value_set_id", PAIRS)
def test_the_chart_renders_what_the_overlay_renders(kustomize, helm, value_set_id):
    found = differences(kustomize[value_set_id], helm[value_set_id])
    assert not found, f"{len(found)} difference(s) from {PAIRS[value_set_id].id}:\n" + "\n".join(found[:60])
    assert len(helm[value_set_id].docs) >= 20


def test_every_deliberate_difference_says_why():
    assert DELIBERATE and all(len(reason) > 60 for reason in DELIBERATE.values())


def test_a_drift_of_the_chart_is_reported(kustomize, tmp_path):
    """A copy of the chart with a probe, a selector label, an env var and an object changed."""
    chart = shutil.copytree(CHART, tmp_path / "catga")
    web = chart / "templates" / "web.yaml"
    text = web.read_text()
    text = text.replace("periodSeconds: 5\n", "periodSeconds: 6\n", 1)  # the readiness probe
    text = text.replace("value: catga-web\n", "value: web\n", 1)  # OTEL_SERVICE_NAME
    web.write_text(text)
    consumers = chart / "templates" / "consumers.yaml"
    consumers.write_text(
        consumers.read_text().replace("      catga.io/context: {{ $context }}\n{{- end }}", "{{- end }}")
    )
    (chart / "templates" / "istio.yaml").unlink()
    drifted = render_chart(as_overlay(VALUE_SET["prod-hpa-monitoring-istio"], "prod"), chart)
    found = "\n".join(differences(kustomize["prod-hpa-monitoring-istio"], drifted))
    assert "Deployment/catga-web.spec.template.spec.containers[0].readinessProbe.periodSeconds" in found
    assert "kustomize 'catga-web' != helm 'web'" in found
    assert "PodDisruptionBudget/catga-consumer-orders.spec.selector.matchLabels.catga.io/context" in found
    assert "VirtualService/catga-web: rendered by kustomize only" in found


def test_a_drift_of_the_overlay_is_reported(kustomize, helm):
    """The other side: an overlay that changes without the chart (here, in a copy of its render)."""
    drifted = copy.deepcopy(kustomize["prod"])
    env = drifted.find("ConfigMap", "catga-env")
    env["data"]["CATGA_SHUTDOWN_GRACE"] = "15"
    nats = drifted.get("StatefulSet", "nats")
    nats["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    web = drifted.get("Deployment", "catga-web")
    web["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    found = "\n".join(differences(drifted, helm["prod"]))
    assert "ConfigMap/catga-env.data.CATGA_SHUTDOWN_GRACE: kustomize '15' != helm '20'" in found
    assert "StatefulSet/nats.spec.template.spec.containers[0].resources.limits.memory" in found
    assert "Deployment/catga-web.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem" in found


def test_a_broken_migration_hook_copy_is_reported(kustomize, tmp_path):
    """The hook's own catga-env copy must equal catga-env (the Job would run with other settings)."""
    chart = shutil.copytree(CHART, tmp_path / "catga")
    migrate = chart / "templates" / "migrate.yaml"
    migrate.write_text(
        migrate.read_text().replace(
            '  {{- include "catga.envData" . | nindent 2 }}\n---',
            '  {{- include "catga.envData" . | nindent 2 }}\n  X: "1"\n---',
            1,
        )
    )
    drifted = render_chart(as_overlay(VALUE_SET["prod"], "prod"), chart)
    assert any("catga-migrate-env" in message for message in differences(kustomize["prod"], drifted))
