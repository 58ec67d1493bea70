"""A paginator that never counts a whole million-row table.

Django's admin asks its paginator for `count` on every page, a full `COUNT(*)` of
the filtered rows. This one counts at most `horizon` rows (`SELECT COUNT(*) FROM
(SELECT id ... LIMIT horizon + 1)`), so a page costs the same at a thousand rows
and at a hundred million; past the horizon the list says "more than N". The horizon
reaches a little past the page asked for, so paging on always works (an OFFSET
that deep costs as much as this count anyway).
"""

from django.core.paginator import Paginator
from django.utils.functional import cached_property

DEFAULT_HORIZON = 10_000


class CappedCountPaginator(Paginator):
    def __init__(self, object_list, per_page, *args, horizon: int = DEFAULT_HORIZON, **kwargs):
        super().__init__(object_list, per_page, *args, **kwargs)
        self.horizon = horizon

    @cached_property
    def count(self) -> int:
        # values("pk") keeps annotations and deferred columns out of the counted subquery.
        return self.object_list.order_by().values("pk")[: self.horizon + 1].count()

    @property
    def capped(self) -> bool:
        """True when there are more rows than were counted."""
        return self.count > self.horizon

    @property
    def counted(self) -> int:
        return min(self.count, self.horizon)


def horizon_for(page_number: int, per_page: int) -> int:
    """Count far enough to show the requested page and the next few."""
    return max(DEFAULT_HORIZON, (page_number + 5) * per_page)
