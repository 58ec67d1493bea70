"""What other apps contribute to the operations console, without the mediator knowing them.

The mediator imports no bounded context, yet support searches the history by an
order id and the dashboard shows orders by status. So a context contributes, from
its own `admin.py` (loaded by the admin's autodiscovery, where it registers its
ModelAdmins too):

    from apps.mediator.console import extensions

    extensions.register_search(correlation_ids_of_order)   # term -> correlation ids
    extensions.register_panel("Orders by status", orders_by_status)  # () -> rows

A search resolver takes what support typed and returns the correlation ids it
names (an order id names the conversation that order started). A panel returns a
list of (label, value) rows shown as a small table on the dashboard; it should cost
one query or so, since the dashboard refreshes itself.
"""

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

SearchResolver = Callable[[str], Iterable[str]]
PanelRows = list[tuple[str, object]]


@dataclass(frozen=True)
class Panel:
    title: str
    rows: Callable[[], Iterable[tuple[str, object]]]
    link: str = ""  # where the title points (an admin changelist, say)


_resolvers: dict[str, SearchResolver] = {}
_panels: dict[str, Panel] = {}
_mediator: Callable[[], object] | None = None


def use_mediator(provider: Callable[[], object]) -> None:
    """The composition root (apps.mediator.admin) says where the console's mediator comes from."""
    global _mediator
    _mediator = provider


def mediator():
    """The process's mediator: replays go out through its transport, the dashboard reads its lag."""
    if _mediator is None:
        raise RuntimeError("the console has no mediator: apps.mediator.admin binds it when the admin loads")
    return _mediator()


def _key(func: Callable) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def register_search(resolver: SearchResolver) -> SearchResolver:
    """Add a resolver (idempotent: registering the same function twice keeps one)."""
    _resolvers[_key(resolver)] = resolver
    return resolver


def register_panel(title: str, rows: Callable[[], Iterable[tuple[str, object]]], *, link: str = "") -> None:
    _panels[title] = Panel(title, rows, link)


def resolvers() -> list[SearchResolver]:
    return list(_resolvers.values())


def correlation_ids_for(term: str) -> list[str]:
    """Every correlation id a registered resolver finds for `term` (order kept, no repeats)."""
    found: dict[str, None] = {}
    for resolver in _resolvers.values():
        for correlation_id in resolver(term):
            if correlation_id:
                found[correlation_id] = None
    return list(found)


def panels() -> list[tuple[Panel, PanelRows | None]]:
    """Each panel with its rows, or None for a panel that failed (logged, not fatal)."""
    rendered = []
    for panel in _panels.values():
        try:
            rows: PanelRows | None = list(panel.rows())
        except Exception:
            log.exception("dashboard panel %r failed", panel.title)
            rows = None
        rendered.append((panel, rows))
    return rendered
