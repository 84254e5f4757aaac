"""Property: whatever an attacker writes into a CloudTrail record, the ingest endpoint answers 2xx/4xx
(never 5xx) and the good canary event sent in the same batch still alerts.

Hypothesis builds hostile records on top of a real one: any field replaced by any JSON value (lone
surrogates, NUL, escape sequences, bidi overrides, NaN, huge integers, deep lists), times from year 1
to year 9999, the canary's key id, an unknown one or none. Real HTTP against a live issuer.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from issuer.models import Alert
from tests.support.cloudtrail import cloudtrail_event
from tests.support.ingest import ingest_settings, plant_canary, post_ingest

HOSTILE = ["\ud800", "\udfff", "\x00", "\x1b[2J\x1b[H", "\x07", "\u202e", "\u2028", "\x9b31m", "\\", '"']
text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(st.characters(exclude_categories=()), max_size=20),  # surrogates included
    st.lists(st.sampled_from(HOSTILE), max_size=4).map("".join),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
times = st.one_of(
    st.sampled_from(
        ["9999-12-31T23:59:59Z", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]
    ),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)).map(
        lambda d: d.isoformat() + "Z"
    ),
    json_values,
)
FIELDS = [
    "eventID",
    "eventName",
    "eventSource",
    "awsRegion",
    "sourceIPAddress",
    "userAgent",
    "errorCode",
    "requestParameters",
    "recipientAccountId",
    "userIdentity",
]


def test_no_hostile_record_makes_ingest_fail_or_hides_its_neighbour(issuer_factory: Any) -> None:
    issuer = issuer_factory(**ingest_settings())
    canary = plant_canary(issuer)
    sent: list[str] = []

    @settings(max_examples=60)
    @given(
        key=st.sampled_from([canary["access_key_id"], "AKIANOTACANARY000001", None]),
        changes=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4),
        identity_changes=st.dictionaries(
            st.sampled_from(["type", "arn", "accountId", "accessKeyId", "userName"]), json_values, max_size=2
        ),
        when=times,
        wrap=st.sampled_from(["event", "detail-not-object", "not-object"]),
    )
    def run(
        key: Any, changes: dict[str, Any], identity_changes: dict[str, Any], when: Any, wrap: str
    ) -> None:
        hostile: Any = cloudtrail_event(access_key_id=key)
        hostile["detail"].update(changes)
        if isinstance(hostile["detail"].get("userIdentity"), dict):
            hostile["detail"]["userIdentity"].update(identity_changes)
        hostile["detail"]["eventTime"] = when
        if wrap == "detail-not-object":
            hostile["detail"] = changes.get("userAgent", "x")
        elif wrap == "not-object":
            hostile = changes.get("requestParameters", 7)
        good_id = str(uuid.uuid4())
        good = cloudtrail_event(access_key_id=canary["access_key_id"], event_id=good_id)
        response = post_ingest(issuer, [hostile, good])
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] >= 1
        sent.append(good_id)

    run()
    with issuer.session() as session:
        alerts = session.scalars(select(Alert)).all()
        assert sum(alert.event_count for alert in alerts) >= len(sent) > 0
        for alert in alerts:
            assert alert.last_seen.year < 9999
