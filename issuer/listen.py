"""The issuer's listening socket, bound before anything else so a busy port is a sentence, not a trace.

`serve` binds it first (before migrations) and hands it to uvicorn; `check` binds and closes it.
"""

from __future__ import annotations

import errno
import socket


class ListenError(Exception):
    def __init__(self, message: str, *, in_use: bool = False) -> None:
        super().__init__(message)
        self.in_use = in_use


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for host:port, or ListenError saying why not in an operator's words."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {where}: the host name does not resolve ({exc.strerror})"
        ) from None
    family, kind, proto, _canon, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"{where} is already in use by another process", in_use=True) from None
        if exc.errno == errno.EACCES:
            raise ListenError(
                f"not allowed to listen on {where} (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ListenError(f"{host} is not an address of this host") from None
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


__all__ = ["ListenError", "bind_listen_socket"]
