"""Who may send what: the roles a broker's users are made from, derived from the registry.

- A context's role (its run_consumer processes) publishes the context's own events, sends
  its own commands and the other contexts' commands it lists in `SENDS`.
- `web` (the API and the admin) is the roles of the contexts whose commands it runs
  in-process (CATGA["WEB_CONTEXTS"]; empty: every context).
- `admin` is unrestricted: operators' tools, never a Deployment's.

A process told its role (CATGA["ROLE"]) hands the transport only what that role may
publish, and its outbox relay takes only those rows: the rest (an admin replay of another
context's event, say) wait in the outbox for the relay of a context that may send them.
"""

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.messages import _TYPES, Kind, Message
from apps.mediator.core.registry import Registry

WEB = "web"
ADMIN = "admin"


def roles(registry: Registry) -> list[str]:
    return [*registry.contexts, WEB, ADMIN]


def contexts_of(registry: Registry, role: str) -> tuple[str, ...]:
    """The contexts whose messages `role` publishes and whose deliveries it consumes."""
    if role == WEB:
        chosen = tuple(catga_settings.WEB_CONTEXTS) or registry.contexts
        unknown = sorted(set(chosen) - set(registry.contexts))
        if unknown:
            raise ValueError(f'CATGA["WEB_CONTEXTS"] names unknown context(s) {unknown}')
        return chosen
    if role in registry.contexts:
        return (role,)
    raise ValueError(f"unknown role {role!r}: one of {', '.join(roles(registry))}")


def publishable(registry: Registry, role: str) -> list[type[Message]] | None:
    """Message types `role` may publish, by wire name; None for no limit (admin, or no role)."""
    if not role or role == ADMIN:
        return None
    own = set(contexts_of(registry, role))
    types = {t for t in _TYPES.values() if t.options.context in own and t.kind in (Kind.COMMAND, Kind.EVENT)}
    for context in own:
        types.update(registry.commands_sent(context))
    return sorted(types, key=lambda t: t.options.wire_name)


def publishable_names(registry: Registry, role: str | None = None) -> frozenset[str] | None:
    """The wire names this process (CATGA["ROLE"] unless given) may publish; None: any."""
    types = publishable(registry, catga_settings.ROLE if role is None else role)
    return None if types is None else frozenset(t.options.wire_name for t in types)
