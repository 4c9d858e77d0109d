"""A gevent load generator on a fixed beat that keeps every request's (start, end, status).

Used by faults.py. wrk reports totals only; a fault scenario needs to know *when* each
request started and ended relative to the fault, so this client records them all.

Each client is one greenlet with one keep-alive HTTP/1.1 connection. It sends
``GET <path><random key>`` every ``every`` seconds whatever the answers: on a beat,
rather than as fast as answers come, so that a side answering errors fast does not buy
itself more requests to fail. A request that takes longer than the beat delays only
that client's next one. An exception or the client's timeout counts as status 0.
Loopback only; run it under ``python -m gevent.monkey``.
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import gevent

# Longer than the outage the restart scenario makes (3 s), shorter than the pools'
# 30 s wait: a request the pool would still be holding at 10 s has failed for its user.
CLIENT_TIMEOUT_S = 10.0
FAILED = 0  # the status recorded for an exception or a timeout


class ClientTimeout(Exception):
    """The request took longer than CLIENT_TIMEOUT_S."""


class ProtocolError(Exception):
    """The server closed the connection mid-response or sent what we cannot frame."""


def _read_until(sock: socket.socket, buf: bytes, marker: bytes) -> bytes:
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed before the end of the headers")
        buf += chunk
    return buf


def _read_exactly(sock: socket.socket, buf: bytes, size: int) -> bytes:
    while len(buf) < size:
        chunk = sock.recv(max(size - len(buf), 65536))
        if not chunk:
            raise ProtocolError("connection closed before the end of the body")
        buf += chunk
    return buf


def _skip_chunked(sock: socket.socket, buf: bytes) -> None:
    """Read a chunked body to its end (gunicorn chunks a body without Content-Length)."""
    while True:
        buf = _read_until(sock, buf, b"\r\n")
        line, _, buf = buf.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        buf = _read_exactly(sock, buf, size + 2)  # the chunk and its CRLF
        buf = buf[size + 2 :]
        if size == 0:
            return


def exchange(sock: socket.socket, request: bytes) -> tuple[int, bool]:
    """Send one request, read its whole response; return (status, keep the connection)."""
    sock.sendall(request)
    buf = _read_until(sock, b"", b"\r\n\r\n")
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    keep = headers.get(b"connection") != b"close"
    if headers.get(b"transfer-encoding") == b"chunked":
        _skip_chunked(sock, body)
    elif b"content-length" in headers:
        _read_exactly(sock, body, int(headers[b"content-length"]))
    else:
        raise ProtocolError("a response with neither Content-Length nor chunks")
    return status, keep


@dataclass
class Load:
    """Clients against ``127.0.0.1:port``; ``done`` holds (started, ended, status) per request."""

    port: int
    path: str
    keys: int
    every: float = 0.05
    done: list[tuple[float, float, int]] = field(default_factory=list)
    # Why requests failed without a status: exception class names.
    exceptions: Counter[str] = field(default_factory=Counter)
    _clients: list[tuple[gevent.Greenlet, list[bool]]] = field(default_factory=list)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def add(self, count: int) -> None:
        """Start ``count`` more clients, their first requests spread over one beat."""
        for i in range(count):
            running = [True]
            offset = self.every * i / count
            self._clients.append((gevent.spawn(self._client, running, offset), running))

    def remove(self, count: int) -> None:
        """Stop the ``count`` newest clients: each ends after its request in flight."""
        for _ in range(count):
            _, running = self._clients.pop()
            running[0] = False

    def stop(self) -> None:
        """Stop every client and wait for the requests in flight (bounded by the timeout)."""
        greenlets = [greenlet for greenlet, _ in self._clients]
        self.remove(len(self._clients))
        gevent.joinall(greenlets, timeout=CLIENT_TIMEOUT_S + 2)
        gevent.killall(greenlets, timeout=2)

    def _client(self, running: list[bool], offset: float) -> None:
        sock: socket.socket | None = None
        beat = time.monotonic() + offset
        try:
            while True:
                gevent.sleep(max(beat - time.monotonic(), 0.0))
                if not running[0]:
                    return
                beat = max(beat + self.every, time.monotonic())
                sock = self._one(sock)
        finally:
            if sock is not None:
                sock.close()

    def _one(self, sock: socket.socket | None) -> socket.socket | None:
        """One request; returns the connection to reuse, or None to reconnect next time."""
        key = random.randint(1, self.keys) if self.keys else ""
        request = f"GET {self.path}{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        started = time.monotonic()
        status = FAILED
        try:
            with gevent.Timeout(CLIENT_TIMEOUT_S, ClientTimeout):
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port))
                status, keep = exchange(sock, request)
        except (OSError, ValueError, IndexError, ProtocolError, ClientTimeout) as exc:
            self.exceptions[type(exc).__name__] += 1
            keep = False
        self.done.append((started, time.monotonic(), status))
        if not keep and sock is not None:
            sock.close()
            sock = None
        return sock
