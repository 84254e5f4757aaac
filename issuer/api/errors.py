"""HTTP wiring of the error tree: every error is `{"error": {"code", "message"}}`.

Domain errors (issuer.errors.ApiError and its subclasses) carry their status and code; FastAPI's
validation errors and Starlette's HTTP errors get the same shape, and a body FastAPI cannot parse says
what was wrong with it (invalid UTF-8, nesting too deep, an integer too long). Request bodies over
`max_body_bytes` get 413 body_too_large from RequestLimitsMiddleware, which counts the bytes actually
received, so chunked bodies without Content-Length are limited too; request headers over
MAX_HEADER_BYTES get 431 headers_too_large. (What uvicorn itself refuses: issuer.api.server.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from issuer.errors import ApiError

log = logging.getLogger(__name__)


MAX_HEADER_BYTES = 16 * 1024  # all request headers together; a bearer token needs well under 1 KiB

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    431: "headers_too_large",
}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


class BodyTooLarge(StarletteHTTPException):
    """Raised from inside `receive` when the body passes the limit (FastAPI re-raises HTTPException)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """One readable sentence per problem, naming the field: `body.events.0.kind: Input should be ...`."""
    parts = []
    for error in errors[:10]:
        if error.get("type") == "json_invalid":
            ctx = error.get("ctx") or {}
            parts.append(f"request body is not valid JSON ({ctx.get('error', 'parse error')})")
            continue
        loc = ".".join(str(p) for p in error.get("loc", ()))
        if error.get("type") == "extra_forbidden":
            parts.append(f"{loc}: unknown field")
        elif error.get("type") == "missing":
            parts.append(f"{loc}: field required")
        else:
            parts.append(f"{loc}: {error.get('msg', 'invalid value')}")
    if len(errors) > 10:
        parts.append(f"... and {len(errors) - 10} more")
    return "; ".join(parts) or "invalid request"


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else dict(exc.headers)
    return error_response(exc.status_code, exc.code, exc.message, headers or None)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", describe_validation_errors(exc.errors()))


def body_parse_problem(cause: BaseException | None) -> str:
    """What was wrong with a request body FastAPI could not parse (it only says "There was an error
    parsing the body"): said from the exception it raised that from."""
    if isinstance(cause, UnicodeDecodeError):
        return (
            f"request body is not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at offset "
            f"{cause.start}); JSON bodies must be UTF-8"
        )
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply to parse (arrays or objects nested about 1,000 levels)"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "request body has an integer too long to parse (more than 4,300 digits)"
    if cause is not None:
        return f"request body could not be parsed as JSON ({type(cause).__name__})"
    return "request body could not be parsed as JSON"


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return error_response(400, "bad_request", body_parse_problem(exc.__cause__))
    code = _HTTP_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "internal_error")
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    elif exc.status_code == 405:
        message = "method not allowed on this route"
    return error_response(exc.status_code, code, message, dict(exc.headers or {}) or None)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    # The traceback is logged (no request body is ever logged); the client gets no internals.
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return error_response(500, "internal_error", "internal error; see the issuer log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


class RequestLimitsMiddleware:
    """Pure ASGI middleware: 431 for headers over `header_limit` bytes, 413 for bodies over `limit`
    bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int, header_limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit
        self.header_limit = header_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))
        if header_bytes > self.header_limit:
            message = f"request headers are larger than the limit of {self.header_limit} bytes"
            await self._reject(send, 431, "headers_too_large", message)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, 400, "bad_request", "Content-Length is not a number")
                    return
                if declared > self.limit:
                    await self._reject(send, 413, "body_too_large", self._message())
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # Only reached when the app read the body outside FastAPI's own handling.
            if not started:
                await self._reject(send, 413, "body_too_large", self._message())

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.limit} bytes"

    @staticmethod
    async def _reject(send: Send, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
