"""checkov's Kubernetes and Dockerfile checks pass, but for the skips below and their reasons.

checkov is slow to start, so it runs once for the module, over the overlays as committed
and each overlay with every component (once with either consumer autoscaler), plus the
Dockerfile. It runs from its own virtualenv ($(VENV)/checkov, requirements/k8s-checkov.txt)
and never talks to its vendor's API (--skip-download, BC_SKIP_MAPPING).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import COMPONENTS, OVERLAYS, REPO, Combo

pytestmark = pytest.mark.k8s

SKIPS = {
    "CKV_K8S_15": (
        "imagePullPolicy Always: images are immutable (exact version tags, and CD pins the app image by "
        "digest), so Always only adds a registry round trip to every pod start and makes restarts fail "
        "while the registry is down; dev also runs locally loaded images (catga:dev) that no registry has."
    ),
    "CKV_K8S_35": (
        "secrets as files: Django settings and dj-database-url read DJANGO_SECRET_KEY and DATABASE_URL, "
        "the app's NATS client NATS_USER/NATS_PASSWORD, and permissions.conf each user's "
        "$NATS_PASSWORD_<ROLE>, from the environment; files would need *_FILE support in the app. "
        "Each container gets only the Secret keys it needs: a Deployment its own NATS password, NATS all."
    ),
    "CKV_K8S_43": (
        "image digests: committed overlays carry exact version tags; the deploy workflow replaces the app "
        "image with the digest it pushed (kustomize edit set image catga=<name>@<digest>). Digests of nats "
        "and postgres need a registry lookup that this repository's CI cannot make."
    ),
    "CKV_DOCKER_2": (
        "HEALTHCHECK: one image serves three roles on different ports (web 8000, consumers 8001, the "
        "migration Job none); Kubernetes ignores HEALTHCHECK and probes each role on its own endpoint."
    ),
}


def checkov_binary() -> str:
    candidates = [
        os.environ.get("CHECKOV"),
        str(Path(sys.prefix) / "checkov" / "bin" / "checkov"),
        shutil.which("checkov"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    if os.environ.get("CI"):
        pytest.fail("checkov is not installed: `make test` puts it in $(VENV)/checkov")
    pytest.skip("checkov is not installed: `make test` puts it in $(VENV)/checkov")


def scanned_combinations() -> list[Combo]:
    everything_but = {name: tuple(c for c in COMPONENTS if c != name) for name in ("hpa-consumers", "keda-consumers")}
    return [Combo(overlay) for overlay in OVERLAYS] + [
        Combo(overlay, components) for overlay in OVERLAYS for components in everything_but.values()
    ]


@pytest.fixture(scope="module")
def checkov_report(renders, tmp_path_factory):
    """checkov's JSON report, without any skip, so the tests can see what each skip hides."""
    directory = tmp_path_factory.mktemp("checkov")
    for index, combo in enumerate(scanned_combinations()):
        rendered = renders[combo]
        (directory / f"{index:02d}-{combo.id.replace('+', '_').replace('(', '').replace(')', '')}.yaml").write_text(
            yaml.safe_dump_all(rendered.docs, sort_keys=False)
        )
    shutil.copyfile(REPO / "Dockerfile", directory / "Dockerfile")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE", "LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [checkov_binary(), "-d", str(directory), "--framework", "kubernetes", "dockerfile", "--skip-download",
         "--quiet", "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # 1: some check failed, which the tests below judge
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def failures(reports) -> list[tuple[str, str, str]]:
    return [
        (check["check_id"], check["resource"], Path(check["file_path"]).name)
        for report in reports
        for check in report["results"]["failed_checks"]
    ]


def test_checkov_scanned_the_manifests_and_the_dockerfile(checkov_report):
    by_type = {report["check_type"]: report["summary"] for report in checkov_report}
    assert set(by_type) == {"kubernetes", "dockerfile"}
    assert all(summary["parsing_errors"] == 0 for summary in by_type.values())
    assert by_type["kubernetes"]["resource_count"] > 20 * len(scanned_combinations())
    assert by_type["kubernetes"]["passed"] > 100


def test_no_check_fails_but_the_skipped_ones(checkov_report):
    unexpected = [failure for failure in failures(checkov_report) if failure[0] not in SKIPS]
    assert not unexpected, "\n".join(map(str, unexpected))


def test_every_skip_still_hides_a_failure_and_says_why(checkov_report):
    failing = {check_id for check_id, _, _ in failures(checkov_report)}
    stale = set(SKIPS) - failing
    assert not stale, f"skips that no longer hide anything (remove them): {stale}"
    assert all(len(reason) > 80 for reason in SKIPS.values())
