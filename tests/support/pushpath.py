"""The emulated account's real push path for end-to-end tests (fixture `push_path`).

A moto server of its own (with AWS's managed policies loaded, so AWS's quarantine policy exists), the
CloudTrail recorder in front of it (demo/cloudtrail.py, the same the demo uses) and the SQS queue an
EventBridge rule feeds: CloudTrail record -> events:PutEvents -> rule -> SQS -> the issuer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from demo.cloudtrail import CloudTrailRecorder, setup_push_path
from tests.support.moto import run_moto_server

OPERATOR = ("testing", "testing")  # moto without IAM enforcement accepts any key for the operator


@dataclasses.dataclass
class PushPath:
    moto_url: str  # the account's API as the issuer reaches it
    aws_url: str  # the account's API as every other client reaches it: through the recorder
    queue_url: str
    recorder: CloudTrailRecorder


@pytest.fixture
def push_path() -> Iterator[PushPath]:
    with run_moto_server({"MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}) as moto_url:
        queue_url = setup_push_path(moto_url, OPERATOR)
        with CloudTrailRecorder(moto_url, OPERATOR) as recorder:
            yield PushPath(moto_url, recorder.url, queue_url, recorder)
