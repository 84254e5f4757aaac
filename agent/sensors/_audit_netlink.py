"""The audit netlink reader: records from the kernel's multicast read-log group, assembled into
events (one syscall's SYSCALL/CWD/PATH/PROCTITLE records, grouped by serial).

The multicast group ``AUDIT_NLGRP_READLOG`` (needs CAP_AUDIT_READ) coexists with auditd (which owns
the unicast channel) and works without it. Socket overflow (ENOBUFS) is counted, never hidden.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from agent.sensors._audit_parse import AuditRecord, EventAssembler, record_from_netlink
from agent.sensors.base import SensorUnavailable

log = logging.getLogger(__name__)

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
_NLMSG_HDR = struct.Struct("=IHHII")


def netlink_records(data: bytes) -> list[AuditRecord]:
    out = []
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size:
            break
        record = record_from_netlink(msg_type, data[offset + _NLMSG_HDR.size : offset + length])
        if record is not None:
            out.append(record)
        offset += (length + 3) & ~3
    return out


def open_multicast_socket() -> socket.socket:
    """A non-blocking socket joined to the read-log group, with a large receive buffer."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
    except OSError as exc:
        raise SensorUnavailable(
            f"cannot join the kernel audit multicast group (NETLINK_AUDIT readlog): {exc}"
        ) from exc
    for opt in (33, socket.SO_RCVBUF):  # 33 = SO_RCVBUFFORCE (root may exceed rmem_max)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
            break
    sock.setblocking(False)
    return sock


class AuditReader:
    """Reads `sock` until `stop` is set; each record goes to `on_record`, each event to `on_event`."""

    def __init__(
        self,
        sock: socket.socket,
        stop: threading.Event,
        on_record: Callable[[AuditRecord], None],
        on_event: Callable[[list[AuditRecord]], None],
        event_timeout: float,
    ) -> None:
        self.sock = sock
        self.stop = stop
        self.on_record = on_record
        self.on_event = on_event
        self.event_timeout = event_timeout
        self.overflows = 0
        self.error: str | None = None

    def run(self) -> None:
        assembler = EventAssembler()
        sock = self.sock
        while not self.stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.25)
            now = time.monotonic()
            if ready:
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    data = b""
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        self.overflows += 1
                        log.warning("audit multicast socket overflowed: records were lost")
                        continue
                    if self.stop.is_set():
                        return
                    self.error = f"audit socket failed: {exc}"
                    raise
                for record in netlink_records(data):
                    self.on_record(record)
                    for records in assembler.add(record, now):
                        self.on_event(records)
            for records in assembler.flush(now, self.event_timeout):
                self.on_event(records)


__all__ = ["AUDIT_NLGRP_READLOG", "NETLINK_AUDIT", "AuditReader", "netlink_records", "open_multicast_socket"]
