"""The issuer's HTTP error tree and handlers: every error is `{"error": {"code", "message"}}`.

    ApiError
    ├── Unauthenticated      401 unauthenticated
    ├── Forbidden            403 forbidden
    ├── NotFound             404 not_found
    ├── Conflict             409 conflict
    ├── InvalidRequest       422 invalid_request
    ├── TooManyRequests      429 rate_limited (with Retry-After)
    └── AwsUpstreamError     502 aws_error

Domain code raises these; the HTTP layer (issuer.api.errors) turns each into its status and the
JSON error body, so no module outside issuer/api needs FastAPI.
"""

from __future__ import annotations


class ApiError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}


class Unauthenticated(ApiError):
    status_code = 401
    code = "unauthenticated"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class InvalidRequest(ApiError):
    status_code = 422
    code = "invalid_request"


class TooManyRequests(ApiError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class AwsUpstreamError(ApiError):
    status_code = 502
    code = "aws_error"
