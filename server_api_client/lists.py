"""The issuer's paged lists (devices, alerts, reads, credentials) and the coverage report.

Every list route answers one page, ``{"<items>": [...], "next_cursor": "..." | null}``. The
``*_page`` methods return one :class:`Page`; the ``iter_*`` methods follow ``next_cursor`` and
yield items as pages arrive (a responder streaming 100,000 devices never holds them all); the
``list_*`` methods collect an iterator into a list, as they did before the issuer paged.
Filters travel unchanged from page to page: the issuer refuses a cursor used with other filters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from server_api_client.errors import ProtocolError
from server_api_client.models import AlertSummary, CredentialInfo, Device, ReadRecord, parse_list

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def _seg(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"an id must be a non-empty string, got {value!r}")
    return quote(value, safe="")


def _query(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop unset filters; booleans as the issuer spells them."""
    return {
        k: (("true" if v else "false") if isinstance(v, bool) else v)
        for k, v in params.items()
        if v is not None
    }


class ListRoutes:
    """Mixed into IssuerClient, which provides ``_request``."""

    _request: Callable[..., Any]

    def _page(
        self,
        path: str,
        key: str,
        model: Any,
        params: Mapping[str, Any],
        cursor: str | None,
        limit: int | None,
    ) -> Page[Any]:
        data = self._request(
            "GET", path, params=_query({**params, "cursor": cursor, "limit": limit}), idempotent=True
        )
        items = [model.from_json(item) for item in parse_list(data, key, model.__name__)]
        next_cursor = data.get("next_cursor")
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise ProtocolError(f"{model.__name__} list: next_cursor has type {type(next_cursor).__name__}")
        return Page(items=items, next_cursor=next_cursor or None)

    def _follow(
        self,
        path: str,
        key: str,
        model: Any,
        params: Mapping[str, Any],
        *,
        max_items: int | None = None,
        page_size: int | None = None,
    ) -> Iterator[Any]:
        cursor: str | None = None
        yielded = 0
        while True:
            size = page_size
            if max_items is not None:
                size = min(size or max_items, max_items - yielded)
            page = self._page(path, key, model, params, cursor, size)
            for item in page.items:
                yield item
                yielded += 1
            if page.next_cursor is None or (max_items is not None and yielded >= max_items):
                return
            if page.next_cursor == cursor:  # a broken server must not make us loop forever
                raise ProtocolError(f"{path}: the issuer returned the same cursor twice")
            cursor = page.next_cursor

    # ------------------------------------------------------------------------------------ devices

    def devices_page(
        self, *, cursor: str | None = None, limit: int | None = None, **filters: Any
    ) -> Page[Device]:
        """One page of ``GET /v1/devices``; filters: stale, sensor_healthy, planted (booleans), os,
        agent_version, sensor, q (part of the hostname or serial)."""
        return self._page("/v1/devices", "devices", Device, filters, cursor, limit)

    def iter_devices(
        self, *, max_items: int | None = None, page_size: int | None = None, **filters: Any
    ) -> Iterator[Device]:
        return self._follow(
            "/v1/devices", "devices", Device, filters, max_items=max_items, page_size=page_size
        )

    def list_devices(self, **filters: Any) -> list[Device]:
        """Every device matching the filters (all pages)."""
        return list(self.iter_devices(**filters))

    def device_reads(
        self, device_id: str, since: str | None = None, path: str | None = None, limit: int | None = None
    ) -> list[ReadRecord]:
        """Reads of planted files on one device, newest first; at most ``limit`` (all pages if None).
        ``since`` is a duration (``24h``) or an ISO time."""
        return list(self.iter_device_reads(device_id, since=since, path=path, max_items=limit))

    def device_reads_page(
        self,
        device_id: str,
        *,
        since: str | None = None,
        path: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Page[ReadRecord]:
        """One page of a device's reads, newest first."""
        route = f"/v1/devices/{_seg(device_id)}/reads"
        return self._page(route, "reads", ReadRecord, {"since": since, "path": path}, cursor, limit)

    def iter_device_reads(
        self,
        device_id: str,
        *,
        since: str | None = None,
        path: str | None = None,
        max_items: int | None = None,
        page_size: int | None = None,
    ) -> Iterator[ReadRecord]:
        route = f"/v1/devices/{_seg(device_id)}/reads"
        params = {"since": since, "path": path}
        return self._follow(route, "reads", ReadRecord, params, max_items=max_items, page_size=page_size)

    # ------------------------------------------------------------------------------------ credentials

    def list_credentials(self, device_id: str, status: str | None = None) -> list[CredentialInfo]:
        """The device's credentials (all pages), oldest first."""
        route = f"/v1/devices/{_seg(device_id)}/credentials"
        return list(self._follow(route, "credentials", CredentialInfo, {"status": status}))

    def iter_credentials(
        self, *, max_items: int | None = None, page_size: int | None = None, **filters: Any
    ) -> Iterator[CredentialInfo]:
        """Every credential of the fleet; filters: device_id, status, backend, account."""
        return self._follow(
            "/v1/credentials",
            "credentials",
            CredentialInfo,
            filters,
            max_items=max_items,
            page_size=page_size,
        )

    # ------------------------------------------------------------------------------------ alerts

    def alerts_page(
        self, *, cursor: str | None = None, limit: int | None = None, **filters: Any
    ) -> Page[AlertSummary]:
        """One page of ``GET /v1/alerts`` (newest first); filters: status, severity, kind, since,
        until, device_id."""
        return self._page("/v1/alerts", "alerts", AlertSummary, filters, cursor, limit)

    def iter_alerts(
        self, *, max_items: int | None = None, page_size: int | None = None, **filters: Any
    ) -> Iterator[AlertSummary]:
        return self._follow(
            "/v1/alerts", "alerts", AlertSummary, filters, max_items=max_items, page_size=page_size
        )

    def list_alerts(self, status: str | None = None, **filters: Any) -> list[AlertSummary]:
        """Every alert matching the filters (all pages), newest first."""
        return list(self.iter_alerts(status=status, **filters))

    # ------------------------------------------------------------------------------------ coverage

    def coverage(self) -> dict[str, Any]:
        """``GET /v1/coverage``: the fleet at a glance (see docs/api.md)."""
        data = self._request("GET", "/v1/coverage", idempotent=True)
        if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
            raise ProtocolError("Coverage: expected a JSON object with a 'devices' object")
        return data
