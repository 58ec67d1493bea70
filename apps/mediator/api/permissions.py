"""Staff rights come from Django's model permissions, never from is_staff alone.

`is_staff` lets a user log in to the admin; what they may see or do through the API
is what their groups and permissions say, as in the admin itself.
"""

from rest_framework.permissions import BasePermission


def has_model_permission(perm: str) -> type[BasePermission]:
    """A DRF permission class granting the request when the user holds `perm` ("app.codename")."""

    class HasModelPermission(BasePermission):
        message = f"You need the {perm} permission."

        def has_permission(self, request, view) -> bool:
            return bool(request.user and request.user.has_perm(perm))

    HasModelPermission.__name__ = f"Has_{perm.replace('.', '_')}"
    return HasModelPermission
