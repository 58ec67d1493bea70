"""The settings run on PostgreSQL only: DATABASE_URL, or the embedded server's socket."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def settings_in_child(**env) -> subprocess.CompletedProcess:
    # A child process: the settings module reads DATABASE_URL once, at import.
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ.update(DJANGO_SETTINGS_MODULE="catga_site.settings", DJANGO_DEBUG="1", **env)
    code = (
        "from django.conf import settings; d = settings.DATABASES['default']; print(d['ENGINE'], d['HOST'], d['NAME'])"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True)


@pytest.mark.parametrize("url", ["sqlite:///db.sqlite3", "mysql://root@127.0.0.1/catga", "nonsense"])
def test_a_url_that_is_not_postgresql_is_refused_naming_the_setting(url):
    result = settings_in_child(DATABASE_URL=url)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DATABASE_URL must be a PostgreSQL URL" in result.stderr, result.stderr[-2000:]


def test_without_database_url_the_settings_name_the_embedded_servers_socket(tmp_path):
    result = settings_in_child(CATGA_DATA_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    engine, host, name = result.stdout.split()
    assert engine == "apps.mediator.storage.backends.postgresql"
    assert host == str((tmp_path / "postgres").resolve()) and name == "catga"


def test_a_postgresql_url_is_used_as_given():
    result = settings_in_child(DATABASE_URL="postgres://app:secret@db.example:6543/shop")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["apps.mediator.storage.backends.postgresql", "db.example", "shop"]
