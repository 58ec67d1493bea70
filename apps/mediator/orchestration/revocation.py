"""Revoke and purge (storage/revoke.py), with what they mean for chains and groups: a revoked
member fails its workflow at once, so nothing after it is sent and `wait()` answers."""

from apps.mediator.orchestration import workflows
from apps.mediator.storage import revoke as stored


def revoke(message_ids, *, actor: str, reason: str = "") -> list[stored.Revoked]:
    results = stored.revoke(message_ids, actor=actor, reason=reason)
    workflows.members_cancelled([r.message_id for r in results if r.ok], "revoked")
    return results


def purge(*, context: str, type: str | None = None, actor: str, reason: str = "") -> stored.Purged:
    purged = stored.purge(context=context, type=type, actor=actor, reason=reason)
    workflows.members_cancelled(purged.ids, "purged")
    return purged
