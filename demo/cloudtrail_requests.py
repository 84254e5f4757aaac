"""What one request to the emulated account is, as CloudTrail would record it: the signing key, the
action by protocol (query, JSON, S3's REST paths), whether it is a data event a default trail skips,
and the error code of the response. Used by the recorder (demo/cloudtrail.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
from typing import Any

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request")
# Data events: a trail with default settings does not record them (CloudTrail User Guide, "Logging
# data events"); S3 object-level calls are matched by path below.
_DATA_EVENTS = frozenset(
    {
        "ReceiveMessage",
        "SendMessage",
        "SendMessageBatch",
        "DeleteMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibility",
        "ChangeMessageVisibilityBatch",
        "PutEvents",
        "Invoke",
        "GetItem",
        "PutItem",
        "Query",
        "Scan",
        "PutRecord",
        "PutRecords",
        "GetRecords",
    }
)
MAX_PARAM = 1024


# ---- reading a request ----------------------------------------------------------------------------


def signing_scope(headers: Any, query: dict[str, list[str]]) -> tuple[str, str, str] | None:
    """(access key id, region, service) from SigV4: the Authorization header or a presigned query."""
    auth = headers.get("Authorization") or ""
    match = _CREDENTIAL.search(auth)
    if match is None and query.get("X-Amz-Credential"):
        match = _CREDENTIAL.search("Credential=" + query["X-Amz-Credential"][0])
    if match is None:
        return None
    return match.group(1), match.group(3), match.group(4)


def _lower_camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _params(pairs: dict[str, list[str]]) -> dict[str, Any]:
    return {
        _lower_camel(k): v[0][:MAX_PARAM]
        for k, v in pairs.items()
        if k not in ("Action", "Version") and not k.startswith("X-Amz-") and v
    }


def _s3_action(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, dict[str, Any], bool]:
    """(eventName, requestParameters, is a data event) of a path-style S3 REST call."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return ("ListBuckets" if method == "GET" else f"{method.title()}Service"), {}, False
    params: dict[str, Any] = {"bucketName": parts[0]}
    if len(parts) > 1:  # object-level: a data event
        return (
            {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
                method, "PostObject"
            ),
            {**params, "key": "/".join(parts[1:])},
            True,
        )
    sub = next(
        (k for k in query if k not in ("list-type", "prefix", "delimiter", "max-keys", "encoding-type")), None
    )
    if method == "GET":
        if sub:
            return f"GetBucket{sub[:1].upper()}{sub[1:]}", params, False
        return "ListObjects", params, True
    verbs = {
        "PUT": "Create" if not sub else "PutBucket",
        "DELETE": "Delete" if not sub else "DeleteBucket",
        "HEAD": "Head",
    }
    name = verbs.get(method, method.title())
    return (f"{name}Bucket" if not sub else f"{name}{sub[:1].upper()}{sub[1:]}"), params, False


def request_action(
    method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes, service: str
) -> tuple[str, dict[str, Any], bool]:
    """(eventName, requestParameters, is a data event) of one request, by protocol."""
    target = headers.get("X-Amz-Target")
    if target:  # JSON protocols: "AmazonSQS.ListQueues", "AWSEvents.PutRule"
        name = target.rsplit(".", 1)[-1]
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            doc = {}
        params = {_lower_camel(k): v for k, v in doc.items()} if isinstance(doc, dict) else {}
        return name, params, name in _DATA_EVENTS
    form: dict[str, list[str]] = dict(query)
    if "x-www-form-urlencoded" in (headers.get("Content-Type") or "") and body:
        form.update(urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
    if form.get("Action"):  # query protocol (IAM, STS, SQS's XML API, ...)
        name = form["Action"][0]
        return name, _params(form), name in _DATA_EVENTS
    if service == "s3":
        return _s3_action(method, path, query)
    # Another REST API: named after the method and the path's words (real names need each service's model).
    words = "".join(p[:1].upper() + p[1:] for p in path.split("/") if p and not p[0].isdigit())
    return f"{method.title()}{words[:60]}", {}, False


def error_of(status: int, headers: Any, body: bytes) -> tuple[str | None, str | None]:
    """(errorCode, errorMessage) of an AWS error response (XML, JSON or x-amzn-ErrorType)."""
    if status < 400:
        return None, None
    text = body[:65536].decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]+)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    if code:
        return code.group(1), message.group(1) if message else None
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if isinstance(doc, dict):
            kind = doc.get("__type") or doc.get("code") or doc.get("Code")
            if isinstance(kind, str):
                return kind.rsplit("#", 1)[-1], str(doc.get("message") or doc.get("Message") or "") or None
    kind = headers.get("x-amzn-ErrorType")
    return (kind.split(":", 1)[0] if kind else f"HTTP{status}"), None


__all__ = ["MAX_PARAM", "error_of", "request_action", "signing_scope"]
