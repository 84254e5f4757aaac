"""The addresses a device's agent reaches the issuer from: the device's egress as the issuer sees it.

Recorded on every heartbeat and upload (the TCP peer, or behind a configured trusted proxy the
client it names in X-Forwarded-For). When the canary is used, the source address AWS recorded is
compared with these: "used from this device's network" and "used from an address this device was
never seen at" are very different stories.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from issuer.models import DeviceAddress, utcnow


def normalise(address: str | None) -> str | None:
    """The canonical text of an IP address (IPv4-mapped IPv6 as IPv4); None for anything else."""
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return parsed.compressed


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[str]) -> str | None:
    """The device's address: the TCP peer, unless the peer is a trusted proxy; then the right-most
    address in X-Forwarded-For that is not itself a trusted proxy (a client can prepend anything to
    the header, so only what the trusted proxies appended is believed)."""
    peer = normalise(peer)
    if peer is None or not trusted_proxies or not forwarded_for:
        return peer
    networks = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def trusted(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in network for network in networks)

    if not trusted(peer):
        return peer
    hops = [normalise(part) for part in forwarded_for.split(",")]
    for hop in reversed(hops):
        if hop is None:
            return peer  # a hop we cannot read: stop believing the header there
        if not trusted(hop):
            return hop
    return peer


#: A known address is written again at most this often: a heartbeat from where the device was last
#: seen costs one indexed read, not a write (100,000 devices beat every 5 minutes). The verdict looks
#: at days of addresses, so an hour of slack in `last_seen` changes nothing it decides.
REFRESH = dt.timedelta(hours=1)


def record_address(
    session: Session, device_id: str, address: str | None, now: dt.datetime | None = None
) -> None:
    """Note that `device_id` reached the issuer from `address` (commits when it wrote)."""
    address = normalise(address)
    if address is None:
        return
    now = now or utcnow()
    last_seen = session.scalar(
        select(DeviceAddress.last_seen).where(
            DeviceAddress.device_id == device_id, DeviceAddress.address == address
        )
    )
    if last_seen is not None and last_seen >= now - REFRESH:
        return  # seen here within the hour: a read, no write
    if last_seen is not None:
        session.execute(
            update(DeviceAddress)
            .where(DeviceAddress.device_id == device_id, DeviceAddress.address == address)
            .values(last_seen=now, seen_count=DeviceAddress.seen_count + 1)
        )
    else:
        try:
            with session.begin_nested():
                session.add(
                    DeviceAddress(
                        device_id=device_id, address=address, first_seen=now, last_seen=now, seen_count=1
                    )
                )
        except IntegrityError:
            pass  # the same device's concurrent request recorded it a moment ago
    session.commit()


def seen_addresses(session: Session, device_id: str, since: dt.datetime) -> list[DeviceAddress]:
    """The device's addresses seen since `since`, most recent first."""
    return list(
        session.scalars(
            select(DeviceAddress)
            .where(DeviceAddress.device_id == device_id, DeviceAddress.last_seen >= since)
            .order_by(DeviceAddress.last_seen.desc())
            .limit(200)
        )
    )


def addresses(rows: Iterable[DeviceAddress]) -> list[str]:
    return [row.address for row in rows]
