"""OpenAPI helpers shared by the contexts' views (the mediator knows no context's fields)."""

from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination

PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, required=False, description="Page size (default 100)."),
    OpenApiParameter("offset", int, required=False, description="Items to skip."),
]


def paginated(name: str, item_serializer) -> serializers.Serializer:
    """The LimitOffsetPagination envelope around a list of `item_serializer`."""
    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item_serializer(many=True),
        },
    )


def errors(*codes: int) -> dict:
    """Documented error answers: field errors (400) or {"detail": ...}."""
    from drf_spectacular.utils import OpenApiResponse

    described = {
        400: 'Invalid input: field errors, e.g. {"lines": [{"sku": ["Unknown SKU \'X\'."]}]}',
        401: "Not authenticated",
        403: "Not allowed",
        404: "Not found",
        409: "Conflicts with the current state",
    }
    return {code: OpenApiResponse(description=described[code]) for code in codes}


class Pagination(LimitOffsetPagination):
    """LimitOffsetPagination with bounds: a page of at most 1000, and an offset the
    database can represent (the fuzzer's 2**64 offset was a 500 on SQLite)."""

    max_limit = 1000
    max_offset = 2**31 - 1

    def get_offset(self, request) -> int:
        return min(super().get_offset(request), self.max_offset)
