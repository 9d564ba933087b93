"""Input bounds at every edge: integers that fit the database, text that PostgreSQL can store.

PostgreSQL's BIGINT is int64 and its text cannot hold NUL; UTF-8 cannot encode a lone surrogate
(JSON allows `"\\udc80"`). Such values used to travel through validation and fail in the driver,
answering 500. Here they are refused where they enter, with a 4xx / INVALID_ARGUMENT:

- `Int64`, `NonNegInt64`, `PositiveInt64`: bounded integers for query, path and body fields;
- `Text`: a string without NUL or lone surrogates; `same_secret`: a token comparison that any
  submitted text can reach;
- `InputGuard`: an ASGI middleware every kit service runs, refusing NUL in the path, query and
  form bodies, and in JSON bodies NUL, lone surrogates, NaN/Infinity and numbers beyond int64;
- `install_validation_errors`: 422 responses that can always be encoded (the default handler
  echoes the input, and an echoed lone surrogate failed to encode);
- `check_message`: the same rules for a gRPC request (protobuf strings).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from annotated_types import Interval
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from kizuna.kit.errors import InvalidArgument
from pydantic import AfterValidator
from starlette.responses import JSONResponse

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

Int64 = Annotated[int, Interval(ge=INT64_MIN, le=INT64_MAX)]
NonNegInt64 = Annotated[int, Interval(ge=0, le=INT64_MAX)]
PositiveInt64 = Annotated[int, Interval(ge=1, le=INT64_MAX)]


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text (NUL, lone surrogate), or None when it can."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


def _clean_text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"text {problem}")
    return value


Text = Annotated[str, AfterValidator(_clean_text)]


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one. `hmac.compare_digest`
    raises TypeError on non-ASCII str (a 500 for any such form or query); bytes always compare."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


# ---- JSON bodies ------------------------------------------------------------------------------


class _Refused(ValueError):
    pass


def _parse_int(literal: str) -> int:
    value = int(literal)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _Refused(f"the number {literal[:30]}{'…' if len(literal) > 30 else ''} is out of range (64-bit integers)")
    return value


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not -(2.0**63) <= value <= 2.0**63:  # also catches overflow to inf
        raise _Refused(f"the number {literal[:30]} is out of range")
    return value


def _parse_constant(literal: str) -> Any:
    raise _Refused(f"{literal} is not a JSON number")


def _check_strings(value: Any, path: str = "body") -> None:
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise _Refused(f"{path} {problem}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, f"{path} key")
            _check_strings(item, f"{path}.{key}" if text_problem(key) is None else path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}[{index}]")


def json_problem(body: bytes) -> str | None:
    """Why a JSON body is refused (see the module), or None. Malformed JSON is left to the route."""
    try:
        value = json.loads(body, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _Refused as exc:
        return str(exc)
    except ValueError:
        return None  # not JSON at all: the route's own validation answers 4xx
    try:
        _check_strings(value)
    except _Refused as exc:
        return str(exc)
    return None


def _has_nul(encoded: bytes) -> bool:
    return b"\x00" in encoded or b"%00" in encoded


# ---- the middleware ---------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class InputGuard:
    """Refuses, with 400, requests carrying values no route can store (see the module docstring).

    JSON and form bodies are read here (then replayed to the route) up to `max_body` bytes; a
    larger body is refused with 413."""

    def __init__(self, app: Any, max_body: int = 1 << 20) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or _has_nul(scope.get("raw_path") or b""):
            await _refuse(scope, receive, send, "the path contains a NUL character")
            return
        if _has_nul(scope.get("query_string", b"")):
            await _refuse(scope, receive, send, "the query contains a NUL character")
            return
        kind = _content_type(scope)
        is_json = kind == "application/json" or kind.endswith("+json")
        is_form = kind == "application/x-www-form-urlencoded"
        if not (is_json or is_form):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _refuse(scope, receive, send, f"the body is larger than {self.max_body} bytes", 413)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = json_problem(body) if is_json else ("the form contains a NUL character" if _has_nul(body) else None)
        if problem is not None:
            await _refuse(scope, receive, send, problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _content_type(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return str(value.decode("latin-1").split(";", 1)[0].strip().lower())
    return ""


async def _refuse(scope: Scope, receive: Receive, send: Send, message: str, status: int = 400) -> None:
    response = JSONResponse({"error": "invalid_argument", "message": message}, status_code=status)
    await response(scope, receive, send)


# ---- validation errors ------------------------------------------------------------------------


class _AsciiJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        # ensure_ascii: an echoed input that is not valid Unicode still encodes (as \\udc80).
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def install_validation_errors(app: FastAPI) -> None:
    """422 with the field errors, encodable whatever the input was."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = jsonable_encoder(exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
        return _AsciiJSONResponse({"error": "invalid_argument", "detail": detail}, status_code=422)


# ---- gRPC requests ----------------------------------------------------------------------------


def check_message(message: Any, path: str = "") -> None:
    """Raise InvalidArgument when a protobuf message carries a string with NUL (any depth)."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if _is_repeated(field) else [value]
            if field.message_type is None:
                for item in values:
                    problem = text_problem(item)
                    if problem is not None:
                        raise InvalidArgument(f"{name} {problem}")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(key, str) and text_problem(key) is not None:
                        raise InvalidArgument(f"{name} has a key that {text_problem(key)}")
                    if isinstance(item, str):
                        if text_problem(item) is not None:
                            raise InvalidArgument(f"{name}[{key!r}] {text_problem(item)}")
                    elif hasattr(item, "ListFields"):
                        check_message(item, f"{name}[{key!r}].")
            elif _is_repeated(field):
                for index, item in enumerate(value):
                    check_message(item, f"{name}[{index}].")
            else:
                check_message(value, f"{name}.")


def _is_repeated(field: Any) -> bool:
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return bool(field.label == field.LABEL_REPEATED)
