"""Keyset (cursor) pagination over an immutable sort key that ends in a unique id.

A page is the next `limit` rows after the last row of the previous page in a fixed order, e.g.
(enrolled_at, id). Rows inserted while a client pages appear or not depending on where they sort,
but a row that existed when paging started is never returned twice nor skipped: unlike OFFSET,
inserts and deletes do not shift the pages.

The cursor is opaque to clients: URL-safe base64 of a small JSON document holding the list's name,
a fingerprint of its filters (a cursor is refused by a differently filtered query instead of
silently returning a wrong page) and the sort key of the last row.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from issuer.errors import InvalidRequest

T = TypeVar("T")
MAX_CURSOR_LENGTH = 2048
_TIME_TAG = "t:"


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class SortKey:
    """One column of the order; `descending` applies to it. The last key must be unique."""

    column: InstrumentedAttribute[Any]
    descending: bool = False


class InvalidCursor(InvalidRequest):
    """The cursor is malformed, or belongs to another list or another set of filters."""


def _fingerprint(filters: Mapping[str, Any]) -> str:
    canonical = json.dumps({k: v for k, v in filters.items() if v is not None}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _encode_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _TIME_TAG + value.astimezone(dt.UTC).isoformat()
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_TIME_TAG):
        try:
            return dt.datetime.fromisoformat(value[len(_TIME_TAG) :])
        except ValueError as exc:
            raise InvalidCursor("query.cursor: not a cursor this issuer made") from exc
    if value is None or isinstance(value, str | int):
        return value
    raise InvalidCursor("query.cursor: not a cursor this issuer made")


def encode_cursor(kind: str, filters: Mapping[str, Any], key: Sequence[Any]) -> str:
    document = {"l": kind, "f": _fingerprint(filters), "k": [_encode_value(v) for v in key]}
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, filters: Mapping[str, Any], width: int) -> list[Any]:
    """The sort key stored in `cursor`; InvalidCursor (422) if it is not one for this query."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursor("query.cursor: too long to be a cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("query.cursor: not a cursor this issuer made") from exc
    if not isinstance(document, dict) or document.get("l") != kind:
        raise InvalidCursor(f"query.cursor: not a cursor of this list ({kind})")
    if document.get("f") != _fingerprint(filters):
        raise InvalidCursor("query.cursor: it was made with other filters; repeat the same filters")
    key = document.get("k")
    if not isinstance(key, list) or len(key) != width:
        raise InvalidCursor("query.cursor: not a cursor this issuer made")
    return [_decode_value(v) for v in key]


def _after(keys: Sequence[SortKey], values: Sequence[Any]) -> Any:
    """Rows strictly after `values` in the order of `keys`: (a > x) OR (a = x AND b > y) ..."""
    clauses = []
    for index, key in enumerate(keys):
        equal = [keys[i].column == values[i] for i in range(index)]
        beyond = key.column < values[index] if key.descending else key.column > values[index]
        clauses.append(and_(*equal, beyond))
    first = keys[0]
    # A plain range on the leading column lets the database walk its index from the cursor on.
    leading = first.column <= values[0] if first.descending else first.column >= values[0]
    return and_(leading, or_(*clauses))


def _check_type(key: SortKey, value: Any) -> None:
    """A cursor is client input: a value of the wrong type would reach the database as an error."""
    expected = key.column.type.python_type
    if expected is dt.datetime:
        ok = isinstance(value, dt.datetime) and value.tzinfo is not None
    else:
        ok = isinstance(value, expected) and not isinstance(value, bool)
        ok = ok and not (isinstance(value, str) and "\x00" in value)
    if not ok:
        raise InvalidCursor("query.cursor: not a cursor this issuer made")


def paginate(
    session: Session,
    query: Select[Any],
    *,
    kind: str,
    keys: Sequence[SortKey],
    key_of: Callable[[Any], Sequence[Any]],
    limit: int,
    cursor: str | None,
    filters: Mapping[str, Any],
) -> Page[Any]:
    """Run `query` (a select of ORM entities) in the order of `keys`, one page at a time."""
    if cursor:
        values = decode_cursor(cursor, kind, filters, len(keys))
        for key, value in zip(keys, values, strict=True):
            _check_type(key, value)
        query = query.where(_after(keys, values))
    order = [k.column.desc() if k.descending else k.column.asc() for k in keys]
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(kind, filters, key_of(rows[-1])) if more and rows else None
    return Page(items=rows, next_cursor=next_cursor)
