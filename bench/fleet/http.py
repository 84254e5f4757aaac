"""A small pooled HTTP/1.1 client on asyncio streams, with h11 (uvicorn's own HTTP parser, already a
dependency) doing the protocol: keep-alive connections, one request at a time each, so one process
can drive thousands of simulated agents without a thread per agent."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11


class HttpError(Exception):
    """The connection failed or closed before a whole response arrived."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, bytes]:
        all_headers = [*headers, ("Content-Length", str(len(body)))]
        data = self.h11.send(h11.Request(method=method, target=target, headers=all_headers))
        data += self.h11.send(h11.Data(data=body)) if body else b""
        data += self.h11.send(h11.EndOfMessage())
        self.writer.write(data)
        await self.writer.drain()
        status = 0
        chunks: list[bytes] = []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                received = await self.reader.read(65536)
                self.h11.receive_data(received)  # b"" = EOF: h11 turns it into an error or a close
                if not received and self.h11.their_state is not h11.DONE:
                    raise HttpError("connection closed before the response ended")
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError("connection closed")
        return status, b"".join(chunks)

    def reusable(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        self.writer.close()


class HttpPool:
    """At most `size` keep-alive connections to one host:port; requests wait for a free one."""

    def __init__(self, host: str, port: int, size: int, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(size)

    async def request(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        if isinstance(body, bytes):  # pre-encoded (the same heartbeat for thousands of agents)
            payload = body
        else:
            payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        headers = [("Host", f"{self.host}:{self.port}"), ("Accept", "application/json")]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        async with self._slots:
            connection = self._idle.pop() if self._idle else None
            try:
                if connection is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), self.timeout
                    )
                    connection = _Connection(reader, writer)
                status, raw = await asyncio.wait_for(
                    connection.request(method, path, headers, payload), self.timeout
                )
            except (TimeoutError, OSError, h11.ProtocolError, HttpError) as exc:
                if connection is not None:
                    connection.close()
                raise HttpError(f"{type(exc).__name__}: {exc}") from exc
            if connection.reusable():
                self._idle.append(connection)
            else:
                connection.close()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
