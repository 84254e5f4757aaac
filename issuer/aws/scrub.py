"""Keeps credentials out of botocore's DEBUG log (used by issuer/aws/gateway.py; plain logging, no boto3).

The issuer's log level can be `debug`; botocore then logs every exchange with AWS in full.
"""

from __future__ import annotations

import logging
import re


class _SecretScrubber(logging.Filter):
    """botocore logs at DEBUG what would leak credentials: response bodies (CreateAccessKey's and
    AssumeRole's hold secret keys), request headers and the SigV4 canonical request (both carry the
    issuer's own role session token in X-Amz-Security-Token)."""

    _BODY = re.compile(
        r"(<(SecretAccessKey|SessionToken)>)[^<]*(</\2>)|"
        r"(\"(SecretAccessKey|SessionToken)\"\s*:\s*\")[^\"]*(\")"
    )
    _TOKEN = re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[A-Za-z0-9+/=%_-]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        lowered = message.lower()
        if "secretaccesskey" in lowered or "sessiontoken" in lowered or "security-token" in lowered:
            message = self._BODY.sub(lambda m: f"{m[1] or m[4]}<redacted>{m[3] or m[6]}", message)
            record.msg = self._TOKEN.sub(lambda m: f"{m[1]}<redacted>", message)
            record.args = ()
        return True


_SCRUBBER = _SecretScrubber()
# A filter only sees records logged on its own logger (not those propagated from children).
_SCRUBBED_LOGGERS = ("botocore.parsers", "botocore.endpoint", "botocore.hooks", "botocore.auth")


def install_secret_scrubber() -> None:
    """Idempotent; the AWS gateway calls it when it is built."""
    for name in _SCRUBBED_LOGGERS:
        logger = logging.getLogger(name)
        if _SCRUBBER not in logger.filters:
            logger.addFilter(_SCRUBBER)
