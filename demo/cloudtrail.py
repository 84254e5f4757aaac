"""A CloudTrail for the emulated account: a recorder in front of the moto server.

moto has no CloudTrail. This small HTTP proxy on loopback stands where AWS's endpoints stand: every
request passes through to moto unchanged (the Host header too, so SigV4 signatures still verify), and
each signed request becomes a CloudTrail record — the access key id from the SigV4 `Authorization`
header or a presigned query, the action, the source address of the TCP connection, the user agent, the
time, and the error code of moto's response — delivered the way real AWS delivers it: `events:PutEvents`
with detail-type "AWS API Call via CloudTrail" on the account's default bus, where an EventBridge rule
(`setup_push_path`) routes it to the SQS queue the issuer polls. The issuer cannot tell this path
from AWS's, which is the point: the demo and the end-to-end tests travel the real push path.

Like a trail with default settings, it records management events only: S3 object reads and writes,
SQS message traffic, EventBridge PutEvents and Lambda invocations are data events and are not
recorded. The caller's identity is looked up in moto's IAM (GetAccessKeyLastUsed, GetUser) with
the operator's credentials, as CloudTrail resolves it.

`aws_quarantines(user)` plays AWS's security team: it attaches the AWSCompromisedKeyQuarantineV2 managed
policy to a user whose key was "found published" and records the call as an AWS-internal action. How
AWS's own principal appears in that record is not publicly documented; the stand-in uses source and
user agent "AWS Internal" (what CloudTrail shows when AWS acts on an account itself). Detection rules
published for this event (Elastic's, Datadog's) key on the event name and policy ARN, as Tripkey does.

Uses botocore (not boto3) for its own calls, and only the standard library for the proxy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import http.server
import json
import logging
import queue
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import botocore.session
from botocore.config import Config

from demo.cloudtrail_requests import MAX_PARAM, error_of, request_action, signing_scope

log = logging.getLogger(__name__)

DETAIL_TYPE = "AWS API Call via CloudTrail"
QUARANTINE_POLICY = "arn:aws:iam::aws:policy/AWSCompromisedKeyQuarantineV2"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def _client(service: str, endpoint: str, credentials: tuple[str, str], region: str) -> Any:
    session = botocore.session.get_session()
    return session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=credentials[0],
        aws_secret_access_key=credentials[1],
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
    )


def setup_push_path(
    endpoint: str,
    credentials: tuple[str, str],
    *,
    queue_name: str = "tripkey-canary-use",
    region: str = "us-east-1",
) -> str:
    """The account's side of the push path, as an operator deploys it (README, "EventBridge -> SQS"):
    an SQS queue and the documented rule on the default bus (every API call in the account) targeting
    it. Returns the queue URL."""
    sqs = _client("sqs", endpoint, credentials, region)
    events = _client("events", endpoint, credentials, region)
    queue_url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    # The one rule README and docs/detection.md give: every API call in the canary account (a canary's
    # use, and AWS attaching its quarantine policy to a published key, which carries no access key).
    rules = {"tripkey-canary-use": {"detail-type": [DETAIL_TYPE]}}
    for name, pattern in rules.items():
        events.put_rule(
            Name=name, EventPattern=json.dumps(pattern), State="ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"
        )
        events.put_targets(Rule=name, Targets=[{"Id": "issuer-queue", "Arn": queue_arn}])
    return str(queue_url)


# ---- the recorder --------------------------------------------------------------------------------


class CloudTrailRecorder:
    """Proxy on loopback in front of `upstream` (moto) that records and delivers CloudTrail events.

    `credentials` are the account operator's (IAM lookups of callers, PutEvents). Use as a context
    manager, or `start()`/`stop()`; `url` is the endpoint to give AWS clients; `flush()` waits until
    every record made so far was delivered; `records` keeps them (newest last) for inspection.
    """

    def __init__(
        self,
        upstream: str,
        credentials: tuple[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = upstream
        self._upstream_host = parsed.hostname or "127.0.0.1"
        self._upstream_port = parsed.port or 80
        self.credentials = credentials
        self.region = region
        self.records: list[dict[str, Any]] = []
        self.delivered = 0
        self.failed = 0
        self._identities: dict[str, dict[str, Any]] = {}
        self._account_id: str | None = None
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> CloudTrailRecorder:
        for target, name in (
            (self._server.serve_forever, "cloudtrail-proxy"),
            (self._deliver_loop, "cloudtrail-delivery"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> CloudTrailRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record made so far was delivered (or failed); False on timeout."""
        done = threading.Event()

        def wait_for_queue() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait_for_queue, daemon=True).start()
        return done.wait(timeout)

    # ---- AWS's own action --------------------------------------------------------------------

    def aws_quarantines(self, user_name: str, policy_arn: str = QUARANTINE_POLICY) -> dict[str, Any]:
        """Play AWS finding `user_name`'s key published: attach the quarantine policy, record it."""
        iam = _client("iam", self.upstream, self.credentials, self.region)
        error_code = error_message = None
        try:
            iam.attach_user_policy(UserName=user_name, PolicyArn=policy_arn)
        except iam.exceptions.ClientError as exc:
            error_code = exc.response.get("Error", {}).get("Code")
            error_message = exc.response.get("Error", {}).get("Message")
        record = self._record(
            event_source="iam.amazonaws.com",
            event_name="AttachUserPolicy",
            region="us-east-1",
            source_ip="AWS Internal",
            user_agent="AWS Internal",
            identity={"type": "AWSService", "invokedBy": "AWS Internal"},
            params={"userName": user_name, "policyArn": policy_arn},
            error=(error_code, error_message),
        )
        self._queue.put(record)
        return record

    # ---- proxying ----------------------------------------------------------------------------

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _proxy(self) -> None:
                received = dt.datetime.now(dt.UTC)
                body = self._body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or self.command in ("POST", "PUT"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(
                    recorder._upstream_host, recorder._upstream_port, timeout=60
                )
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for key, value in headers.items():
                        upstream.putheader(key, value)
                    upstream.endheaders(body or None)
                    response = upstream.getresponse()
                    payload = response.read()
                    status, reply_headers = response.status, response.getheaders()
                except OSError as exc:
                    self.send_error(502, f"upstream unreachable: {exc}")
                    return
                finally:
                    upstream.close()
                self.send_response_only(status)
                for key, value in reply_headers:
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                recorder._observe(
                    self.command,
                    self.path,
                    self.headers,
                    body,
                    self.client_address[0],
                    received,
                    status,
                    dict(reply_headers),
                    payload,
                )

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _proxy

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler

    def _observe(
        self,
        method: str,
        target: str,
        headers: Any,
        body: bytes,
        source_ip: str,
        received: dt.datetime,
        status: int,
        reply_headers: dict[str, str],
        reply: bytes,
    ) -> None:
        split = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        scope = signing_scope(headers, query)
        if scope is None or split.path.startswith("/moto-api"):
            return  # unsigned: nobody to attribute it to (and moto's own control API)
        key_id, region, service = scope
        name, params, data_event = request_action(method, split.path, query, headers, body, service)
        if data_event:
            return
        self._queue.put(
            {
                "pending": True,
                "key_id": key_id,
                "event_source": f"{service}.amazonaws.com",
                "event_name": name,
                "region": region,
                "source_ip": source_ip,
                "user_agent": headers.get("User-Agent"),
                "params": params or None,
                "error": error_of(status, reply_headers, reply),
                "time": received,
            }
        )

    # ---- records and delivery ------------------------------------------------------------------

    def account_id(self) -> str:
        if self._account_id is None:
            sts = _client("sts", self.upstream, self.credentials, self.region)
            self._account_id = str(sts.get_caller_identity()["Account"])
        return self._account_id

    def _identity(self, key_id: str) -> dict[str, Any]:
        """userIdentity as CloudTrail writes it for an IAM user's access key."""
        if key_id not in self._identities:
            account = self.account_id()
            identity: dict[str, Any] = {"type": "IAMUser", "accountId": account, "accessKeyId": key_id}
            iam = _client("iam", self.upstream, self.credentials, self.region)
            try:
                user_name = iam.get_access_key_last_used(AccessKeyId=key_id)["UserName"]
                user = iam.get_user(UserName=user_name)["User"]
                identity.update(principalId=user["UserId"], arn=user["Arn"], userName=user_name)
            except Exception:  # not an IAM user's key (a federation token, or no such key)
                identity["type"] = "Unknown"
            self._identities[key_id] = identity
        return dict(self._identities[key_id])

    def _record(
        self,
        *,
        event_source: str,
        event_name: str,
        region: str,
        source_ip: str,
        user_agent: str | None,
        identity: dict[str, Any],
        params: dict[str, Any] | None,
        error: tuple[str | None, str | None],
        when: dt.datetime | None = None,
    ) -> dict[str, Any]:
        when = when or dt.datetime.now(dt.UTC)
        record: dict[str, Any] = {
            "eventVersion": "1.08",
            "userIdentity": identity,
            "eventTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventSource": event_source,
            "eventName": event_name,
            "awsRegion": region,
            "sourceIPAddress": source_ip,
            "userAgent": user_agent,
            "requestParameters": params,
            "responseElements": None,
            "requestID": str(uuid.uuid4()),
            "eventID": str(uuid.uuid4()),
            "readOnly": event_name.startswith(("Get", "List", "Describe", "Head")),
            "eventType": "AwsApiCall" if identity.get("type") != "AWSService" else "AwsServiceEvent",
            "managementEvent": True,
            "recipientAccountId": self.account_id(),
            "eventCategory": "Management",
        }
        if error[0]:
            record["errorCode"] = error[0]
            if error[1]:
                record["errorMessage"] = error[1][:MAX_PARAM]
        return record

    def _deliver_loop(self) -> None:
        events = _client("events", self.upstream, self.credentials, self.region)
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                record = item
                if item.get("pending"):
                    record = self._record(
                        event_source=item["event_source"],
                        event_name=item["event_name"],
                        region=item["region"],
                        source_ip=item["source_ip"],
                        user_agent=item["user_agent"],
                        identity=self._identity(item["key_id"]),
                        params=item["params"],
                        error=item["error"],
                        when=item["time"],
                    )
                with self._lock:
                    self.records.append(record)
                result = events.put_events(
                    Entries=[
                        {
                            "Time": dt.datetime.fromisoformat(record["eventTime"].replace("Z", "+00:00")),
                            "Source": "aws." + record["eventSource"].split(".", 1)[0],
                            "DetailType": DETAIL_TYPE,
                            "Detail": json.dumps(record),
                            "Resources": [],
                        }
                    ]
                )
                if result.get("FailedEntryCount"):
                    raise RuntimeError(str(result.get("Entries")))
                self.delivered += 1
            except Exception:
                self.failed += 1
                log.exception("could not deliver a CloudTrail record")
            finally:
                self._queue.task_done()


@contextlib.contextmanager
def recording(upstream: str, credentials: tuple[str, str], **kwargs: Any) -> Iterator[CloudTrailRecorder]:
    recorder = CloudTrailRecorder(upstream, credentials, **kwargs)
    with recorder:
        yield recorder


__all__ = ["DETAIL_TYPE", "QUARANTINE_POLICY", "CloudTrailRecorder", "recording", "setup_push_path"]
