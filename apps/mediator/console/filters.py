"""History filters whose choices come from code, not from `SELECT DISTINCT` on the table.

Django's default filter for a plain CharField lists its values with a DISTINCT
query over every row, on every page view. The kinds, message types and contexts
are known without asking the database: the Kind enum, the message type registry,
and CATGA["CONTEXTS"]. A value that is only in old rows (a type since removed) is
still filterable by URL, it just has no link.
"""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.messages import _TYPES, Kind, contexts_known


class _ExactFilter(admin.SimpleListFilter):
    def queryset(self, request, queryset):
        value = self.value()
        if value:
            return queryset.filter(**{self.parameter_name: value})
        return queryset


class KindFilter(_ExactFilter):
    title = _("kind")
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [(kind.value, kind.value) for kind in Kind]


class ContextFilter(_ExactFilter):
    title = _("context")
    parameter_name = "context"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(contexts_known(catga_settings.CONTEXTS))]


class TypeFilter(_ExactFilter):
    title = _("type")
    parameter_name = "type"

    def lookups(self, request, model_admin):
        context = request.GET.get("context")
        names = sorted(name for name, t in _TYPES.items() if not context or t.options.context == context)
        return [(name, name) for name in names]
