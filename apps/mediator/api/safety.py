"""Input that must never reach a view: NUL characters and JSON nested past reason.

PostgreSQL cannot store or even compare a string holding NUL (a `?sku=%00` lookup
raises inside the driver), and a body nested thousands deep overflows Python's JSON
parser: both were 500s. They answer 400 here, with the reason, before any view runs.
The body check is the consumer's own (codec.check_storable), so both doors refuse the same.
"""

import json
from urllib.parse import unquote

from django.conf import settings
from django.http import JsonResponse
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from apps.mediator.core.codec import check_storable
from apps.mediator.core.errors import UndecodableMessage

MAX_JSON_DEPTH = 32  # an order is 3 deep; what DRF's schema views and the admin send is no deeper


class SafeJSONParser(JSONParser):
    """DRF's JSON parser with the nesting depth bounded and NUL refused, as 400s with the reason."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            check_storable(raw, MAX_JSON_DEPTH)
            encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
            return json.loads(raw.decode(encoding), parse_constant=_no_constant)
        except UndecodableMessage as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class RefuseNulMiddleware:
    """400 for a path or query string holding NUL, before any lookup sends it to PostgreSQL."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "\x00" in request.path or "\x00" in unquote(request.META.get("QUERY_STRING", "")):
            return JsonResponse({"detail": "NUL characters are not allowed in a URL."}, status=400)
        return self.get_response(request)
