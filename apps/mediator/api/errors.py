"""The DRF side of the error mapping: application errors to HTTP answers."""

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from apps.mediator.core.errors import CatgaError, Conflict, NotFound, TransientError, ValidationFailed

_STATUS = [
    (ValidationFailed, status.HTTP_400_BAD_REQUEST),
    (NotFound, status.HTTP_404_NOT_FOUND),
    (Conflict, status.HTTP_409_CONFLICT),
    (TransientError, status.HTTP_503_SERVICE_UNAVAILABLE),
]


def exception_handler(exc, context):
    if isinstance(exc, CatgaError):
        for cls, code in _STATUS:
            if isinstance(exc, cls):
                body = exc.errors if isinstance(exc, ValidationFailed) else {"detail": str(exc)}
                return Response(body, status=code)
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)
