"""DRF's token admin without the keys.

An API token is a password: DRF's own TokenAdmin lists every raw key to anyone who may
view tokens. Here the list and the page show only its first characters, enough to tell
two apart; a new key is shown once, by `manage.py drf_create_token` or the seed.
"""

from django.contrib import admin
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


def hidden(key: str) -> str:
    return f"{key[:4]}…(hidden)" if key else ""


@admin.register(TokenProxy)
class MaskedTokenAdmin(TokenAdmin):
    list_display = ("masked_key", "user", "created")
    readonly_fields = ("masked_key",)

    @admin.display(description="key")
    def masked_key(self, obj):
        return hidden(obj.key)

    def get_fields(self, request, obj=None):
        return ("user",) if obj is None else ("masked_key", "user")

    # Django titles these pages with str(token), which is the key itself.
    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context.update(title=f"API token of {obj.user}", subtitle=hidden(obj.key), original=_Shown(obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def delete_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, object_id)
        shown = {"escaped_object": hidden(obj.key), "object": _Shown(obj)} if obj is not None else {}
        return super().delete_view(request, object_id, {**(extra_context or {}), **shown})

    def get_deleted_objects(self, objs, request):
        _deleted, counts, perms, protected = super().get_deleted_objects(objs, request)
        return [f"API token of {obj.user}: {hidden(obj.key)}" for obj in objs], counts, perms, protected

    def history_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, object_id)
        title = {"title": f"Change history: API token of {obj.user}", "object": _Shown(obj)} if obj else {}
        return super().history_view(request, object_id, {**(extra_context or {}), **title})


class _Shown:
    """A token as the admin's templates may show it: its pk and user, the key hidden."""

    def __init__(self, token):
        # The admin's URLs for a token name its user (DRF's TokenAdmin maps them).
        self.pk, self.user, self._key = token.user.pk, token.user, token.key
        self._meta = token._meta

    def __str__(self) -> str:
        return f"API token of {self.user} ({hidden(self._key)})"
