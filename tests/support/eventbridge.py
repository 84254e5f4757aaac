"""The EventBridge rule the documentation gives (README and docs/detection.md), read from the documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RULE_STATE = "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"


_PATTERN_LINE = re.compile(
    r'^\s*`?(\{"detail-type": \["AWS API Call via CloudTrail"\].*\})`?\s*$', re.MULTILINE
)


def documented_pattern(doc: Path) -> dict[str, Any]:
    found = _PATTERN_LINE.findall(doc.read_text())
    assert len(found) == 1, f"{doc} should give exactly one EventBridge rule pattern, found {found}"
    return dict(json.loads(found[0]))
