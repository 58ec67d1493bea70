"""catga_site/gunicorn.conf.py: the web role's server settings and Prometheus hooks."""

import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from tests.k8s.manifests import REPO

pytestmark = pytest.mark.k8s

CONF = REPO / "catga_site" / "gunicorn.conf.py"


def load(**env: str) -> dict:
    with mock.patch.dict(os.environ, env):
        for name in set(os.environ) - set(env):
            if name.startswith(("GUNICORN_", "WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR")):
                del os.environ[name]
        return runpy.run_path(str(CONF))


def test_serves_every_interface_with_threads_and_tmpfs_heartbeats():
    config = load()
    assert config["bind"] == "0.0.0.0:8000"
    assert config["worker_class"] == "gthread" and config["workers"] >= 1 and config["threads"] >= 1
    assert config["worker_tmp_dir"] == "/dev/shm"  # noqa: S108
    # The pod's root filesystem is read-only: the control socket lives in the /tmp emptyDir.
    assert config["control_socket"].startswith("/tmp/")  # noqa: S108
    assert config["graceful_timeout"] == 25 and config["timeout"] >= config["graceful_timeout"]


def test_operators_tune_it_through_the_environment():
    config = load(WEB_CONCURRENCY="5", GUNICORN_GRACEFUL_TIMEOUT="12")
    assert (config["workers"], config["graceful_timeout"]) == (5, 12)


def test_on_starting_empties_the_multiprocess_directory(tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    for stale in ("counter_17.db", "histogram_17.db", "gauge_liveall_17.db"):
        (directory / stale).write_bytes(b"\0" * 16)
    config = load(PROMETHEUS_MULTIPROC_DIR=str(directory))
    with mock.patch.dict(os.environ, {"PROMETHEUS_MULTIPROC_DIR": str(directory)}):
        config["on_starting"](server=None)
    assert directory.is_dir() and not list(directory.iterdir())


def test_child_exit_drops_a_dead_workers_live_gauges_but_keeps_its_counts(tmp_path):
    """prometheus_client's mark_process_dead: live gauges of the pid go, counters stay summed."""
    (tmp_path / "gauge_liveall_4242.db").write_bytes(b"\0" * 16)
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"\0" * 16)
    (tmp_path / "counter_4242.db").write_bytes(b"\0" * 16)
    (tmp_path / "gauge_liveall_99.db").write_bytes(b"\0" * 16)
    config = load(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    with mock.patch.dict(os.environ, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}):
        config["child_exit"](server=None, worker=SimpleNamespace(pid=4242))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["counter_4242.db", "gauge_liveall_99.db"]


def test_hooks_do_nothing_without_a_multiprocess_directory(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    config = load()
    config["on_starting"](server=None)
    config["child_exit"](server=None, worker=SimpleNamespace(pid=1))


def test_gunicorn_accepts_the_file(tmp_path):
    gunicorn = Path(sys.executable).parent / "gunicorn"
    env = {**os.environ, "DJANGO_DEBUG": "1", "CATGA_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(gunicorn), "--check-config", "-c", str(CONF), "catga_site.wsgi:application"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
