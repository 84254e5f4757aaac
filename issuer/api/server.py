"""How `tripkey-issuer serve` runs the app under uvicorn: its limits and its answers to broken HTTP.

A request uvicorn's HTTP parser (h11) cannot parse never reaches the app, and uvicorn answers it with
a plain-text 400 that no app setting changes. The issuer passes uvicorn its own protocol class
(uvicorn's `http=` option takes one), which answers those requests in the issuer's JSON error shape
too: `431 headers_too_large` when the request head passes H11_MAX_HEAD_BYTES before it is complete,
`400 bad_request` with h11's reason otherwise. This holds for `tripkey-issuer serve`; under another
ASGI server, or behind a proxy that answers first, the answer is theirs (docs/api.md says so).

A request head that arrives whole is parsed whatever its size, so the app also refuses headers over
MAX_HEADER_BYTES itself (issuer.api.errors.RequestLimitsMiddleware): the limit does not depend on how
the bytes were split into packets.
"""

from __future__ import annotations

import http
import json
import sys
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from issuer.api.errors import MAX_HEADER_BYTES, error_body

# h11 refuses a request whose head is still incomplete past this many bytes (its default is 16 KiB).
H11_MAX_HEAD_BYTES = MAX_HEADER_BYTES + 4096  # the head also holds the request line


class JsonErrorsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering requests it cannot parse with the issuer's JSON errors."""

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this from inside `except h11.RemoteProtocolError`: the error says why.
        error = sys.exc_info()[1]
        status = getattr(error, "error_status_hint", 400)
        if status == 431:
            code = "headers_too_large"
            message = f"request headers are larger than the limit of {MAX_HEADER_BYTES} bytes"
        else:
            status, code = 400, "bad_request"
            reason = str(error) if isinstance(error, h11.RemoteProtocolError) else msg
            message = f"the request is not valid HTTP/1.1 ({reason})"
        body = json.dumps(error_body(code, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (
            h11.Response(status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


def server_config(app: Any, *, host: str = "127.0.0.1", port: int = 8700, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of the issuer (also used by the tests' live issuers)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=JsonErrorsH11Protocol,
        h11_max_incomplete_event_size=H11_MAX_HEAD_BYTES,
        proxy_headers=False,
        server_header=False,
        **options,
    )


__all__ = ["H11_MAX_HEAD_BYTES", "JsonErrorsH11Protocol", "server_config"]
