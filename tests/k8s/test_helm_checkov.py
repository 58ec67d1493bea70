"""checkov's Kubernetes checks hold on the chart's output as on the overlays', with the same
skips (tests/k8s/test_checkov.py, each with its reason): one run over every value set."""

import json
import os
import subprocess

import pytest
import yaml

from tests.k8s.helm_chart import VALUE_SETS, render_value_sets, render_value_sets_with_secrets
from tests.k8s.test_checkov import SKIPS, checkov_binary, failures

pytestmark = pytest.mark.k8s


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory):
    binary = checkov_binary()
    directory = tmp_path_factory.mktemp("checkov-helm")
    for variant, renders in (("as-is", render_value_sets()), ("secrets", render_value_sets_with_secrets())):
        for value_set_id, rendered in renders.items():
            (directory / f"{value_set_id}-{variant}.yaml").write_text(
                yaml.safe_dump_all(rendered.docs, sort_keys=False)
            )
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE", "LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [binary, "-d", str(directory), "--framework", "kubernetes", "--skip-download", "--quiet", "--compact",
         "-o", "json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def test_checkov_scanned_every_value_set(checkov_report):
    summary = {report["check_type"]: report["summary"] for report in checkov_report}["kubernetes"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] > 20 * 2 * len(VALUE_SETS) * 0.9
    assert summary["passed"] > 100


def test_no_check_fails_but_the_overlays_skipped_ones(checkov_report):
    unexpected = [failure for failure in failures(checkov_report) if failure[0] not in SKIPS]
    assert not unexpected, "\n".join(map(str, unexpected))
