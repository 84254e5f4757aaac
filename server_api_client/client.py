"""`IssuerClient`: one typed method per route of the issuer HTTP API (docs/api.md).

Transport rules, the reasons behind them:

* Every request has a connect and a read timeout: an agent must never hang on a dead issuer.
* TLS is verified by default; ``ca_bundle`` points at a private CA (``verify=False`` exists for
  loopback tests only).
* Idempotent calls (GET, DELETE, event upload — idempotent by ``event_id`` —, heartbeat, enroll —
  same device key, same device —, EventBridge ingest) are retried with exponential backoff and
  jitter on connection errors, timeouts and 502/503/504.
* Credential minting (mint, rotate) and the other POSTs are retried ONLY when the request
  provably never left this host (connection refused, DNS failure, connect timeout). A read timeout
  could mean the issuer minted a key we never saw; retrying would mint a second one, so the error
  is surfaced instead.
* The token lives only in the ``Authorization`` header; no log line, repr or exception includes it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests
import urllib3.exceptions

from server_api_client.errors import IssuerUnreachable, ProtocolError, RejectedError, error_for_status
from server_api_client.lists import ListRoutes
from server_api_client.models import (
    Alert,
    CredentialInfo,
    DeadLetters,
    Device,
    Enrollment,
    EventBatchResult,
    Health,
    HeartbeatResult,
    IngestResult,
    IssuedCredential,
    RetiredDevice,
    SelftestInfo,
)
from server_api_client.version import __version__

log = logging.getLogger("server_api_client")

RETRY_STATUSES = frozenset({502, 503, 504})
MAX_EVENTS_PER_BATCH = 1000  # docs/api.md: at most 1000 events a batch
MAX_BACKOFF_SECONDS = 30.0


def _seg(value: str) -> str:
    """One URL path segment: ids are opaque, so quote everything (a "/" in an id stays inside it)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"an id must be a non-empty string, got {value!r}")
    return quote(value, safe="")


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the issuer (safe to retry even a mint)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.SSLError) or not isinstance(exc, requests.ConnectionError):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # NewConnectionError covers refused connections and (as NameResolutionError) DNS failures.
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _sum(first: EventBatchResult, second: EventBatchResult, offset: int) -> EventBatchResult:
    """Two results as one; `second`'s error indexes are shifted by `offset` (its batch's start)."""
    return EventBatchResult(
        first.accepted + second.accepted,
        first.duplicates + second.duplicates,
        first.errors + tuple((index + offset, message) for index, message in second.errors),
        first.rejected_ids + second.rejected_ids,
    )


class IssuerClient(ListRoutes):
    """Client of the Tripkey issuer. Thread-safe as far as `requests.Session` is (one per thread is best).

    Paged lists (devices, alerts, reads, credentials) and coverage: server_api_client/lists.py.
    ``token`` is the bearer token of the caller's role (enroll, device or responder); change it with
    the ``token`` property (the agent switches from its enroll token to its device token).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        ca_bundle: str | None = None,
        verify: bool = True,
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"issuer URL must start with http:// or https://, got {base_url!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if ca_bundle and not os.path.exists(ca_bundle):
            raise ValueError(f"ca_bundle {ca_bundle!r} does not exist")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = float(timeout)
        self.verify: bool | str = ca_bundle if ca_bundle else verify
        self.retries = retries
        self.backoff = backoff
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()
        # Tests replace this to observe backoff without sleeping.
        self.sleep: Callable[[float], None] = time.sleep

    # ------------------------------------------------------------------------------------ plumbing

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value

    def __repr__(self) -> str:
        return f"IssuerClient({self.base_url!r}, token={'<set>' if self._token else None})"

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> IssuerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        delay = self.backoff * (2**attempt) * random.uniform(0.5, 1.5)  # jitter spreads a fleet out
        if response is not None:
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.isdigit():
                delay = max(delay, float(retry_after))
        return min(delay, MAX_BACKOFF_SECONDS)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> Any:
        url = self.base_url + path
        send_headers = {"Accept": "application/json", "User-Agent": f"tripkey-client/{__version__}"}
        if auth and self._token:
            send_headers["Authorization"] = f"Bearer {self._token}"
        send_headers.update(headers or {})
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            response: requests.Response | None = None
            try:
                response = self.session.request(
                    method,
                    url,
                    json=body,
                    params=clean_params or None,
                    headers=send_headers,
                    timeout=(self.timeout, self.timeout),
                    verify=self.verify,
                    allow_redirects=False,  # a redirect would carry the token somewhere we did not choose
                )
            except requests.RequestException as exc:
                tls_failure = isinstance(exc, requests.exceptions.SSLError)
                retryable = (idempotent and not tls_failure) or _never_sent(exc)
                if not retryable or attempt >= self.retries:
                    raise IssuerUnreachable(url, _describe(exc), _kind(exc)) from exc
                log.debug("%s %s failed (%s); retry %d", method, url, type(exc).__name__, attempt + 1)
            except OSError as exc:
                # requests raises a bare OSError when the CA bundle vanished after construction.
                raise IssuerUnreachable(url, f"TLS setup failed: {exc}", "tls") from exc
            else:
                if response.status_code in RETRY_STATUSES and idempotent and attempt < self.retries:
                    log.debug("%s %s -> %d; retry %d", method, url, response.status_code, attempt + 1)
                else:
                    log.debug("%s %s -> %d", method, url, response.status_code)
                    return _decode(method, url, response)
            self.sleep(self._delay(attempt, response))
            attempt += 1

    # ------------------------------------------------------------------------------------ enrollment

    def enroll(
        self,
        device_key: str,
        hostname: str,
        os: str,
        *,
        os_version: str | None = None,
        serial: str | None = None,
        users: Sequence[str] = (),
        agent_version: str | None = None,
    ) -> Enrollment:
        """``POST /v1/enroll`` with the enroll token. Same ``device_key`` → same device, new token."""
        body = {
            "device_key": device_key,
            "hostname": hostname,
            "os": os,
            "os_version": os_version,
            "serial": serial,
            "users": list(users),
            "agent_version": agent_version,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return Enrollment.from_json(self._request("POST", "/v1/enroll", body=body, idempotent=True))

    # ------------------------------------------------------------------------------------ credentials

    def mint_credential(self, device_id: str, local_user: str, path: str, profile: str) -> IssuedCredential:
        """Mint a credential for (device, user, path, profile); the earlier one is retired."""
        body = {"local_user": local_user, "path": path, "profile": profile}
        data = self._request(
            "POST", f"/v1/devices/{_seg(device_id)}/credentials", body=body, idempotent=False
        )
        return IssuedCredential.from_json(data)

    def rotate_credential(self, device_id: str, credential_id: str) -> IssuedCredential:
        route = f"/v1/devices/{_seg(device_id)}/credentials/{_seg(credential_id)}/rotate"
        return IssuedCredential.from_json(self._request("POST", route, body={}, idempotent=False))

    def revoke_credential(self, device_id: str, credential_id: str) -> CredentialInfo:
        route = f"/v1/devices/{_seg(device_id)}/credentials/{_seg(credential_id)}"
        return CredentialInfo.from_json(self._request("DELETE", route, idempotent=True))

    def lookup_credential(self, access_key_id: str) -> CredentialInfo:
        """Which device, user, path and profile hold this key (also retired and revoked keys)."""
        data = self._request("GET", f"/v1/credentials/lookup/{_seg(access_key_id)}", idempotent=True)
        return CredentialInfo.from_json(data)

    # ------------------------------------------------------------------------------------ agent events

    def upload_events(self, device_id: str, events: Sequence[Mapping[str, Any]]) -> EventBatchResult:
        """Upload events (idempotent by ``event_id``) in batches of at most 1000.

        A batch refused as too large (413) is split in half and sent again, so one oversized
        batch does not wedge the agent's spool. Counts are summed over the batches. Events the issuer
        refused one by one are in the result's ``errors`` (index in ``events``) and ``rejected_ids``.
        """
        total = EventBatchResult(accepted=0, duplicates=0)
        for start in range(0, len(events), MAX_EVENTS_PER_BATCH):
            batch = list(events[start : start + MAX_EVENTS_PER_BATCH])
            total = _sum(total, self._upload_batch(device_id, batch), start)
        return total

    def _upload_batch(self, device_id: str, batch: list[Mapping[str, Any]]) -> EventBatchResult:
        if not batch:
            return EventBatchResult(accepted=0, duplicates=0)
        route = f"/v1/devices/{_seg(device_id)}/events"
        try:
            result = EventBatchResult.from_json(
                self._request("POST", route, body={"events": batch}, idempotent=True)
            )
        except RejectedError as exc:
            if exc.status_code != 413 or len(batch) == 1:
                raise
        else:
            ids = tuple(
                str(batch[index].get("event_id")) for index, _ in result.errors if 0 <= index < len(batch)
            )
            return EventBatchResult(result.accepted, result.duplicates, result.errors, ids)
        half = len(batch) // 2
        first = self._upload_batch(device_id, batch[:half])
        return _sum(first, self._upload_batch(device_id, batch[half:]), half)

    def heartbeat(self, device_id: str, payload: Mapping[str, Any]) -> HeartbeatResult:
        data = self._request(
            "POST", f"/v1/devices/{_seg(device_id)}/heartbeat", body=dict(payload), idempotent=True
        )
        return HeartbeatResult.from_json(data)

    def start_selftest(self, device_id: str, credential_id: str) -> SelftestInfo:
        """The next use of that credential within 15 minutes opens a ``selftest`` alert."""
        route = f"/v1/devices/{_seg(device_id)}/selftest"
        data = self._request("POST", route, body={"credential_id": credential_id}, idempotent=False)
        return SelftestInfo.from_json(data)

    # ------------------------------------------------------------------------------------ devices

    def get_device(self, device_id: str) -> Device:
        return Device.from_json(self._request("GET", f"/v1/devices/{_seg(device_id)}", idempotent=True))

    def retire_device(self, device_id: str) -> RetiredDevice:
        """Offboard a device: its keys are revoked in AWS, its tokens revoked, it is marked retired.

        Idempotent (and resumable after an AWS failure part-way), so it is retried like a GET.
        """
        data = self._request("POST", f"/v1/devices/{_seg(device_id)}/retire", body={}, idempotent=True)
        return RetiredDevice.from_json(data)

    # ------------------------------------------------------------------------------------ alerts

    def get_alert(self, alert_id: str) -> Alert:
        return Alert.from_json(self._request("GET", f"/v1/alerts/{_seg(alert_id)}", idempotent=True))

    def ack_alert(self, alert_id: str, note: str | None = None) -> Alert:
        return self._alert_action(alert_id, "ack", note)

    def resolve_alert(self, alert_id: str, note: str | None = None) -> Alert:
        return self._alert_action(alert_id, "resolve", note)

    def _alert_action(self, alert_id: str, action: str, note: str | None) -> Alert:
        body = {"note": note} if note is not None else {}
        # Not retried after sending: a repeated call would append the note twice.
        data = self._request("POST", f"/v1/alerts/{_seg(alert_id)}/{action}", body=body, idempotent=False)
        if isinstance(data, dict) and "alert_id" in data:
            return Alert.from_json(data)
        return self.get_alert(alert_id)  # the route answered with a bare ack; fetch the new state

    def dead_letters(self, source: str | None = None, limit: int | None = None) -> DeadLetters:
        """What the issuer skipped (could not parse or record) and why, with the skipped-input counters."""
        params = {"source": source, "limit": limit}
        return DeadLetters.from_json(self._request("GET", "/v1/dead-letters", params=params, idempotent=True))

    # ------------------------------------------------------------------------------------ ingest + health

    def ingest_eventbridge(
        self, destination: str, ingest_key: str, events: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> IngestResult:
        """``POST /v1/ingest/eventbridge/{destination}`` as an EventBridge API destination would."""
        body = dict(events) if isinstance(events, Mapping) else [dict(e) for e in events]
        data = self._request(
            "POST",
            f"/v1/ingest/eventbridge/{_seg(destination)}",
            body=body,
            idempotent=True,  # detections are idempotent by source event id
            headers={"X-Tripkey-Ingest-Key": ingest_key},
            auth=False,
        )
        return IngestResult.from_json(data)

    def health(self) -> Health:
        return Health.from_json(self._request("GET", "/healthz", idempotent=True, auth=False))


def _describe(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failure: {exc}"
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer in time (read timed out)"
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return f"connection failed: {reason or exc}"
    return f"{type(exc).__name__}: {exc}"


def _kind(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)
        verify = isinstance(reason, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc)
        return "tls_verify" if verify else "tls"
    if isinstance(exc, requests.Timeout):
        return "timeout"
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "dns"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return "refused"
    return "connection"


# Statuses that mean the same whoever sends them: a proxy's body limit (the uploader halves its
# batch) and rate limiting. Any other 4xx without the issuer's error body is not the issuer talking.
_MEANINGFUL_FROM_ANYONE = frozenset({413, 429})


def _error_envelope(response: requests.Response) -> tuple[str, str] | None:
    """(code, message) of the issuer's `{"error": {"code", "message"}}`, None if the body is not that."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    if (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        return error["code"], error["message"]
    return None


def _decode(method: str, url: str, response: requests.Response) -> Any:
    """The JSON body of a success, or the most specific exception for an error status."""
    status = response.status_code
    if status >= 400:
        envelope = _error_envelope(response)
        text = (response.text or response.reason or "").strip()
        if envelope is None and status < 500 and status not in _MEANINGFUL_FROM_ANYONE:
            kind = response.headers.get("Content-Type", "no content type")
            raise ProtocolError(
                f"{method} {url}: answered {status} ({kind}) without the issuer's JSON error body, so "
                f"this is not the issuer's API (is the issuer URL right?): {' '.join(text.split())[:120]!r}"
            )
        code, message = envelope or (f"http_{status}", text[:300])  # a proxy's 5xx page: keep the status
        raise error_for_status(status, code, message, method=method, url=url)
    if status >= 300:
        raise ProtocolError(
            f"{method} {url}: unexpected redirect {status} to {response.headers.get('Location')}"
        )
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError) as exc:
        kind = response.headers.get("Content-Type", "no content type")
        raise ProtocolError(f"{method} {url}: answer is not JSON ({kind}, {status})") from exc


__all__ = ["MAX_EVENTS_PER_BATCH", "IssuerClient"]
