"""The Helm chart's pods run, probe, serve an order and stop cleanly, kubelet-style.

The same scenario as tests/k8s/test_kubelet.py runs on the overlays (its docstring says
what is run and checked), here on what the Helm SDK renders for the dev and prod values
with the chart creating the Secrets: nats-server with the chart's nats.conf and users, the
migrate Job (prod: the pre-install hook's), the web and every consumer with their probes.
"""

import pytest

from tests.k8s import helm_chart
from tests.k8s.test_kubelet import run_deployment

pytestmark = [pytest.mark.k8s, pytest.mark.integration]


@pytest.mark.parametrize("values", ["dev", "prod"])
def test_the_charts_pods_run_probe_serve_an_order_and_stop_cleanly(values, tmp_path):
    value_set = helm_chart.VALUE_SET[values]
    if not helm_chart.creates_secrets(value_set):
        value_set = helm_chart.with_secrets(value_set, values)
    run_deployment(helm_chart.render_chart(value_set), f"helm_{values}", tmp_path)
