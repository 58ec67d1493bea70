"""`manage.py check --deploy` is clean with the environment the prod overlay gives the web pods."""

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.manifests import config_env, containers

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.k8s


def web_env(rendered, tmp_path: Path) -> dict[str, str]:
    web = next(w for w in rendered.workloads() if w["metadata"]["name"].endswith("web"))
    container = next(c for c in containers(web, init=False))
    env = config_env(rendered, container)
    # What the Secret and the downward API fill in at run time.
    env.update(
        {
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "POD_IP": "10.0.0.7",
            "DATABASE_URL": "postgres://catga@db.invalid:5432/catga",
            "NATS_PASSWORD": secrets.token_urlsafe(24),  # the web user's, from catga-nats-users
        }
    )
    env["DJANGO_ALLOWED_HOSTS"] = (
        env.get("DJANGO_ALLOWED_HOSTS", "")
        .replace("$(POD_IP)", env["POD_IP"])
        .replace("$(CATGA_PUBLIC_HOSTS)", env.get("CATGA_PUBLIC_HOSTS", ""))
    )
    # The mounted config file, as the kubelet would project it from its ConfigMap.
    files = rendered.find("ConfigMap", "catga-files")
    config = tmp_path / "catga.json"
    config.write_text(files["data"]["catga.json"])
    env["CATGA_CONFIG_FILE"] = str(config)
    # The emptyDir mounted for prometheus_client's multiprocess files (it must exist).
    if "PROMETHEUS_MULTIPROC_DIR" in env:
        multiproc = tmp_path / "prometheus"
        multiproc.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    return env


def deploy_check(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_prod_overlay_passes_the_deploy_check(committed, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CATGA_DATA_DIR": str(tmp_path), **web_env(committed["prod"], tmp_path)}
    assert env.get("DJANGO_DEBUG", "0") in ("0", "false", "False")
    result = deploy_check(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_deploy_check_catches_a_debug_production(committed, tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "CATGA_DATA_DIR": str(tmp_path),
        **web_env(committed["prod"], tmp_path),
        "DJANGO_DEBUG": "1",
    }
    result = deploy_check(env)
    assert result.returncode != 0
    assert "DEBUG" in result.stdout + result.stderr
