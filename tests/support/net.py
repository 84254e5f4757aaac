"""Loopback networking for tests: a free port, waiting for a URL to answer."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode} before {url} answered")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


class SourceRelay:
    """A TCP relay on 127.0.0.1 that connects onward from another loopback source address, so a
    client going through it reaches `target` from `source`: an attacker outside the device's network
    (the whole 127.0.0.0/8 is local on Linux; 127.77.0.9 is in another /24 than the device's
    127.0.0.1). Bytes pass unchanged, so SigV4 signatures still verify."""

    def __init__(self, target: tuple[str, int], source: str = "127.77.0.9") -> None:
        import threading

        self.target = target
        self.source = source
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._threading = threading
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="source-relay", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=30, source_address=(self.source, 0))
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
