"""Domain errors with one mapping to HTTP and gRPC status codes.

Domain code raises these; the kit's HTTP exception handler and gRPC interceptor translate them,
so that the same failure reads the same over every interface.
"""

from __future__ import annotations

import grpc


class DomainError(Exception):
    """A failure the caller can understand and act on."""

    http_status = 400
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    code = "invalid_argument"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """Extra HTTP response headers (e.g. a `WWW-Authenticate` challenge)."""
        return {}


class InvalidArgument(DomainError):
    """The request is malformed or a value is out of range."""


class NotFound(DomainError):
    http_status = 404
    grpc_status = grpc.StatusCode.NOT_FOUND
    code = "not_found"


class AlreadyExists(DomainError):
    """Also used when an idempotency key is reused with a different request."""

    http_status = 409
    grpc_status = grpc.StatusCode.ALREADY_EXISTS
    code = "already_exists"


class FailedPrecondition(DomainError):
    """The request is valid but the system is not in a state that allows it (e.g. no balance)."""

    http_status = 409
    grpc_status = grpc.StatusCode.FAILED_PRECONDITION
    code = "failed_precondition"


class Unauthenticated(DomainError):
    http_status = 401
    grpc_status = grpc.StatusCode.UNAUTHENTICATED
    code = "unauthenticated"


class PermissionDenied(DomainError):
    http_status = 403
    grpc_status = grpc.StatusCode.PERMISSION_DENIED
    code = "permission_denied"


class InsufficientScope(PermissionDenied):
    """The token is valid but was not granted the scope this operation needs (RFC 6750 §3.1)."""

    code = "insufficient_scope"

    def __init__(self, scopes: tuple[str, ...] | list[str], message: str | None = None) -> None:
        self.scopes = tuple(scopes)
        super().__init__(message or f"this operation needs the scope {' or '.join(self.scopes)}")

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(self.scopes)}"'}


class Unavailable(DomainError):
    http_status = 503
    grpc_status = grpc.StatusCode.UNAVAILABLE
    code = "unavailable"
