"""Domain errors with one mapping to HTTP and gRPC status codes.

Domain code raises these; the kit's HTTP exception handler and gRPC server translate them,
so that the same failure reads the same over every interface.
"""

from __future__ import annotations

import errno

import grpc
import sqlalchemy.exc


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


class DatabaseUnavailable(Unavailable):
    """The database refused a connection (too many clients, connection refused, every pooled
    connection busy): nothing was done, and the same request may well work in a few seconds."""

    code = "database_unavailable"
    retry_after_seconds = 5

    def __init__(self, cause: str) -> None:
        super().__init__("the database is not accepting connections right now; try again in a few seconds")
        self.cause = cause

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


# SQLSTATEs with which PostgreSQL turns a new connection away: too many connections (for the
# server, the role or the database), starting up or shutting down; and class 08 (connection
# exception). The drivers (asyncpg, psycopg) carry it as `sqlstate`.
_REFUSING_SQLSTATES = frozenset({"53300", "57P03"})


# The exception types a refusal reaches a handler as: SQLAlchemy's wrapper of the driver's error,
# its pool timeout, and the socket's refusal (which it passes through unwrapped).
DATABASE_REFUSALS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.DBAPIError,
    sqlalchemy.exc.TimeoutError,
    ConnectionRefusedError,
)


def database_refusal(exc: BaseException) -> DatabaseUnavailable | None:
    """`exc` as a `DatabaseUnavailable` when it, or the driver error behind it, is the database
    refusing a connection; None for any other failure.

    The cause names the kind of refusal and the driver's message (PostgreSQL's and the socket's
    messages carry no password); never the SQL or its parameters, which the wrapping SQLAlchemy
    error would."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = _refusal_cause(current)
        if cause is not None:
            return DatabaseUnavailable(cause)
        # SQLAlchemy keeps the driver's error as `orig`; adapters chain theirs as `__cause__`.
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def _refusal_cause(exc: BaseException) -> str | None:
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return "connection pool timeout: every pooled connection stayed in use"
    if isinstance(exc, ConnectionRefusedError) or (isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED):
        return f"connection refused: {exc}"
    sqlstate = getattr(exc, "sqlstate", None)
    if not isinstance(sqlstate, str):
        return None
    message = str(exc)
    # ALTER DATABASE ... ALLOW_CONNECTIONS false (a switchover) answers with a general SQLSTATE.
    closed = sqlstate == "55000" and "not currently accepting connections" in message
    if sqlstate in _REFUSING_SQLSTATES or sqlstate.startswith("08") or closed:
        return f"{type(exc).__name__} (SQLSTATE {sqlstate}): {message}"
    return None
