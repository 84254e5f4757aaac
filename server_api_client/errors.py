"""Exceptions raised by :class:`server_api_client.IssuerClient`.

Every error the client raises is a :class:`TripkeyError`; callers pick the level they care about::

    TripkeyError
      ├── IssuerUnreachable        connection refused, DNS, timeout, TLS failure (message names the URL)
      ├── IssuerResponseError      the issuer answered with an error status (.status_code, .code, .message)
      │     ├── AuthError          401 / 403
      │     ├── RejectedError      any other 4xx (400, 404, 409, 413, 422)
      │     │     └── NotFound     404
      │     └── ServerError        5xx
      └── ProtocolError            not the issuer's API: the body was not JSON or not the documented
                                   shape, or a 4xx came without the issuer's JSON error body (another
                                   web server at that URL)

``IssuerResponseError.code`` is the machine code from the issuer's JSON error body
(``{"error": {"code": ..., "message": ...}}``), e.g. ``"unauthenticated"`` or ``"not_found"``.
No exception message ever contains a token or a secret.
"""

from __future__ import annotations


class TripkeyError(Exception):
    """Base of every error raised by the issuer client."""


class IssuerUnreachable(TripkeyError):
    """The issuer could not be reached: connection refused, DNS failure, timeout or TLS failure.

    ``kind`` says which, for a caller that gives advice: ``"tls_verify"`` (the certificate is not
    trusted: a private CA needs ``ca_bundle``), ``"tls"`` (any other TLS failure, e.g. https:// to a
    port that speaks plain HTTP), ``"dns"``, ``"refused"`` (refused or no route), ``"timeout"``,
    ``"connection"`` (anything else).
    """

    def __init__(self, url: str, reason: str, kind: str = "connection") -> None:
        super().__init__(f"issuer unreachable at {url}: {reason}")
        self.url = url
        self.reason = reason
        self.kind = kind


class IssuerResponseError(TripkeyError):
    """The issuer answered with a 4xx/5xx status."""

    def __init__(self, status_code: int, code: str, message: str, *, method: str = "", url: str = "") -> None:
        where = f" ({method} {url})" if method or url else ""
        super().__init__(f"issuer returned {status_code} {code}: {message}{where}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.method = method
        self.url = url


class AuthError(IssuerResponseError):
    """401 (missing or unknown token) or 403 (the token's role or device may not do this)."""


class RejectedError(IssuerResponseError):
    """The request was refused as invalid: 400, 404, 409, 413, 422 and any other 4xx."""


class NotFound(RejectedError):
    """404: the device, credential, alert or route does not exist."""


class ServerError(IssuerResponseError):
    """5xx: the issuer (or AWS behind it, 502 ``aws_error``) failed."""


class ProtocolError(TripkeyError):
    """The issuer's answer was not JSON or did not have the documented shape."""


def error_for_status(
    status_code: int, code: str, message: str, *, method: str = "", url: str = ""
) -> IssuerResponseError:
    """Return the most specific exception for an error status."""
    cls: type[IssuerResponseError]
    if status_code in (401, 403):
        cls = AuthError
    elif status_code == 404:
        cls = NotFound
    elif 400 <= status_code < 500:
        cls = RejectedError
    elif status_code >= 500:
        cls = ServerError
    else:
        cls = IssuerResponseError
    return cls(status_code, code, message, method=method, url=url)


__all__ = [
    "AuthError",
    "IssuerResponseError",
    "IssuerUnreachable",
    "NotFound",
    "ProtocolError",
    "RejectedError",
    "ServerError",
    "TripkeyError",
    "error_for_status",
]
