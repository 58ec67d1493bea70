"""The image built from the Dockerfile serves every role the Kubernetes manifests give it.

The tests share one image, one database, one NATS server, one web container and one
consumer per context (see conftest.py); they run in this file's order, and the last one
stops the containers the others used.
"""

import re
import secrets
import time

import pytest

from apps.mediator.servers.ports import wait_until
from tests.image.conftest import APP_UID, CONTEXT, grace_period

# The first test waits for the session's build: a cold one downloads every wheel.
pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]

ORDER_DEADLINE = 90


def test_runs_as_the_pods_uid_with_only_tmp_writable(podman, image, app):
    assert podman("image", "inspect", "--format", "{{.Config.User}}", image, check=True).stdout.strip() == (
        f"{APP_UID}:{APP_UID}"
    ), "the image's own USER: runAsNonRoot needs a numeric one"
    # No --user here: the UID must come from the image, as with runAsNonRoot and no runAsUser.
    as_built = podman("run", "--rm", "--network", "none", image, "id", "-u", check=True)
    assert as_built.stdout.strip() == str(APP_UID)

    script = (
        "id -u; "
        "touch /probe 2>/dev/null && echo root-writable || echo root-read-only; "
        "touch /app/probe 2>/dev/null && echo app-writable || echo app-read-only; "
        "touch /tmp/probe && echo tmp-writable"
    )
    result = app.run("filesystem", ["sh", "-c", script])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(APP_UID), "root-read-only", "app-read-only", "tmp-writable"]


def test_the_migration_job_migrates_a_fresh_database(migrated, database):
    before, migrate, after = migrated["before"], migrated["migrate"], migrated["after"]
    assert before.returncode != 0, "`migrate --check` passed on an empty database: the init containers would not wait"
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-3000:]
    assert after.returncode == 0, after.stdout[-2000:] + after.stderr[-2000:]
    applied = set(database.query("SELECT app, name FROM django_migrations"))
    shipped = {(path.parent.parent.name, path.stem) for path in CONTEXT.glob("apps/*/migrations/[0-9]*.py")}
    assert shipped and shipped <= applied, f"not applied: {sorted(shipped - applied)}"


def test_gunicorn_answers_the_probes_and_metrics(web, consumers, podman):
    assert web.get("/health/live")[0] == 200, podman.logs(web.name)
    # Ready once NATS is connected and the consumers have created the app's streams.
    wait_until(lambda: web.get("/health/ready")[0] == 200, timeout=60, interval=0.5, what="/health/ready")
    status, body = web.get("/metrics")
    assert status == 200, podman.logs(web.name)
    assert b"# TYPE " in body and b"django_http_requests" in body, body[:500]


def test_an_order_placed_over_the_api_is_confirmed_by_the_consumers(web, consumers, podman):
    username = f"image-{secrets.token_hex(3)}"
    created = podman(
        "exec",
        "--env",
        f"DJANGO_SUPERUSER_PASSWORD={secrets.token_urlsafe(16)}",
        web.name,
        *("python", "manage.py", "createsuperuser", "--noinput", "--username", username),
        *("--email", f"{username}@example.com"),
    )
    assert created.returncode == 0, created.stderr
    issued = podman("exec", web.name, "python", "manage.py", "drf_create_token", username)
    assert issued.returncode == 0, issued.stderr
    web.token = re.search(rf"Generated token (\w+) for user {username}", issued.stdout).group(1)

    sku = f"IMAGE-{secrets.token_hex(3).upper()}"
    status, item = web.api("POST", "/api/inventory/items/", {"sku": sku, "name": "Mug", "price": "7.50", "on_hand": 10})
    assert status == 201, item
    line = {"sku": sku, "quantity": 2}
    placed = {"customer_id": username, "lines": [line], "payment_token": "tok_visa"}
    status, order = web.api("POST", "/api/orders/", placed)
    assert status == 202 and order["status"] == "pending", order

    def settled():
        code, current = web.api("GET", f"/api/orders/{order['id']}/")
        assert code == 200, current
        return current if current["status"] != "pending" else None

    try:
        final = wait_until(settled, timeout=ORDER_DEADLINE, interval=0.3, what=f"order {order['id']}")
    except TimeoutError as exc:
        logs = "\n".join(podman.logs(c.name, 30) for c in consumers.values())
        raise AssertionError(f"{exc}\n{logs}\n{podman.logs(web.name, 30)}") from None
    assert final["status"] == "confirmed", final
    status, stock = web.api("GET", f"/api/inventory/items/{sku}/")
    assert status == 200 and stock["on_hand"] == 8, stock
    status, payments = web.api("GET", f"/api/payments/?order_id={order['id']}")
    assert status == 200 and [p["status"] for p in payments["results"]] == ["captured"], payments


@pytest.mark.parametrize(
    "role, manifest",
    [("consumers", "consumers/template/deployment.yaml"), ("web", "web/deployment.yaml")],
)
def test_podman_stop_ends_each_container_cleanly_within_its_grace_period(role, manifest, request, podman):
    targets = request.getfixturevalue(role)
    names = [c.name for c in targets.values()] if role == "consumers" else [targets.name]
    grace = grace_period(manifest)
    for name in names:
        started = time.monotonic()
        stopped = podman("stop", "--time", str(grace), name, timeout=grace + 30)
        seconds = time.monotonic() - started
        assert stopped.returncode == 0, stopped.stderr
        code = podman.inspect(name, "{{.State.ExitCode}}")
        # After `grace` seconds podman sends SIGKILL, and the exit code is 137.
        assert code == "0", f"{name} exited {code} after {seconds:.1f}s of {grace}s\n{podman.logs(name)}"
