"""The benchmark harness (`make bench`) runs end to end with tiny counts and writes its JSON.

It measures nothing worth reading at these sizes; it proves that every scenario starts
its processes, drives them and reads its numbers back, on a database of its own.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.run import KEYS  # noqa: E402

pytestmark = pytest.mark.integration


def server_url() -> str:
    """The PostgreSQL server the tests use (DATABASE_URL), or the machine's default one."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


def postgres_reachable(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def test_the_bench_harness_runs_every_scenario_and_writes_every_key_as_a_number(tmp_path):
    url = server_url()
    if not postgres_reachable(url) and not os.environ.get("CI"):
        pytest.skip(f"the benchmarks need PostgreSQL; none at {url}")
    out = tmp_path / "latest.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CATGA_")},
        "DATABASE_URL": url,
        "BENCH_DATABASE": "catga_bench_smoke",  # never a test database
    }
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "saga_orders_per_s" in result.stdout  # the table was printed

    document = json.loads(out.read_text())
    skipped = document["skipped"]
    for key in KEYS:
        if key in skipped:  # only the Celery baseline, and only without Redis
            assert key.startswith("celery_") and "Redis" in skipped[key]
            continue
        value = document[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value > 0, (key, value)
    assert document["run"]["quick"] is True
