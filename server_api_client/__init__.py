"""The one Python client of the Tripkey issuer HTTP API (docs/api.md), and the responder CLI `tripkey`.

    from server_api_client import IssuerClient, NotFound

    with IssuerClient("https://tripkey.example.com", token) as issuer:
        cred = issuer.lookup_credential("AKIA...")

Exceptions form one tree rooted at `TripkeyError` (see `server_api_client.errors`).
"""

from __future__ import annotations

from server_api_client.client import MAX_EVENTS_PER_BATCH, IssuerClient
from server_api_client.errors import (
    AuthError,
    IssuerResponseError,
    IssuerUnreachable,
    NotFound,
    ProtocolError,
    RejectedError,
    ServerError,
    TripkeyError,
)
from server_api_client.models import (
    Alert,
    AlertSummary,
    CredentialInfo,
    DeadLetters,
    Device,
    Enrollment,
    EventBatchResult,
    Health,
    HeartbeatResult,
    IngestResult,
    IssuedCredential,
    ReadRecord,
    RetiredDevice,
    SelftestInfo,
)
from server_api_client.version import __version__

__all__ = [
    "MAX_EVENTS_PER_BATCH",
    "Alert",
    "AlertSummary",
    "AuthError",
    "CredentialInfo",
    "DeadLetters",
    "Device",
    "Enrollment",
    "EventBatchResult",
    "Health",
    "HeartbeatResult",
    "IngestResult",
    "IssuedCredential",
    "IssuerClient",
    "IssuerResponseError",
    "IssuerUnreachable",
    "NotFound",
    "ProtocolError",
    "ReadRecord",
    "RejectedError",
    "RetiredDevice",
    "SelftestInfo",
    "ServerError",
    "TripkeyError",
    "__version__",
]
