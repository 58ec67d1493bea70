"""The NATS users of the manifests: k8s/base/nats/permissions.conf is what `manage.py
nats_permissions` generates from the handler registry, every NATS pod mounts it beside its
nats.conf, and each overlay's nats-users.env.example has one password per user."""

import difflib
import re

import pytest

from apps.mediator.runtime import get_registry
from apps.mediator.transports.nats import permissions
from tests.k8s.manifests import K8S, NATS_PASSWORD_SHAPE, OVERLAYS, secret_example
from tests.k8s.policies import nats_config_files

pytestmark = pytest.mark.k8s

COMMITTED = K8S / "base" / "nats" / "permissions.conf"
REGENERATE = "DJANGO_DEBUG=1 .venv/bin/python manage.py nats_permissions > k8s/base/nats/permissions.conf"


def test_the_committed_permissions_are_what_the_registry_generates():
    generated, committed = permissions.server_config(get_registry()), COMMITTED.read_text()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            "committed",
            "generated",
            n=0,
        )
    )
    assert committed == generated, (
        "k8s/base/nats/permissions.conf is out of date with the handlers (what each context "
        f"handles, publishes and SENDS); regenerate it:\n    {REGENERATE}\n{diff[:3000]}"
    )


def test_every_nats_pod_mounts_the_committed_permissions_beside_its_config(renders):
    """dev replaces nats.conf (a single node) but keeps the base's permissions.conf."""
    committed = COMMITTED.read_text()
    for combo, rendered in renders.items():
        files = nats_config_files(rendered)
        assert files.get("permissions.conf") == committed, combo.id
        assert re.search(r"^include \./permissions\.conf$", files["nats.conf"], re.M), combo.id


def test_each_overlay_has_a_password_for_every_user_and_the_secret_env_none():
    """NATS refuses to start when permissions.conf names a password its environment lacks."""
    referenced = set(re.findall(r"\$(NATS_PASSWORD_\w+)", COMMITTED.read_text()))
    assert referenced == {permissions.password_variable(user["user"]) for user in permissions.users(get_registry())}
    for overlay in OVERLAYS:
        assert secret_example(overlay, "catga-nats-users").keys() == referenced, overlay
        assert not secret_example(overlay, "catga-secrets").keys() & referenced, overlay
    dev = list(secret_example("dev", "catga-nats-users").values())
    assert all(NATS_PASSWORD_SHAPE.fullmatch(value) for value in dev), f"nats-server cannot read {dev}"
    assert len(set(dev)) == len(dev), "dev's example passwords: one per user"
