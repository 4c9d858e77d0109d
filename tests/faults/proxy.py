"""A loopback TCP proxy between the pool and MariaDB that breaks the network on demand.

Test-only. Point an alias at ``proxy.port`` and every byte between the driver and the
server passes through here, so a test can cut every connection, stall traffic without
closing anything, add latency, or refuse new connections the way a full or dying server
does, and count how many connections the pool tried to open.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from typing import Literal

import gevent
import gevent.event
from gevent.server import StreamServer

__all__ = ["Proxy"]

#: What happens to a new connection: passed to the server; answered with MySQL error 1040
#: (as a full server does) and closed; closed at once without a byte (a server dying
#: mid-handshake); accepted and never answered (a server too busy to greet).
NewConnections = Literal["pass", "refuse", "drop", "hang"]


def error_packet(code: int, message: str, sqlstate: str = "08004") -> bytes:
    """A MySQL error packet (sequence 0), as a server sends in place of its greeting."""
    payload = b"\xff" + struct.pack("<H", code) + b"#" + sqlstate.encode() + message.encode()
    return struct.pack("<I", len(payload))[:3] + b"\x00" + payload


#: MySQL command bytes, by the name the counts use.
COMMAND_NAMES = {1: "quit", 2: "init_db", 3: "query", 14: "ping", 22: "stmt_prepare", 31: "reset"}


class _CommandCounter:
    """Counts the commands in one client's byte stream (packets with sequence number 0).

    Each MySQL packet is a 3-byte length, a sequence number, then the payload; a
    command is a packet that starts a new exchange (sequence 0), and its first payload
    byte says which command. The handshake response (sequence 1) is not a command.
    """

    __slots__ = ("_header", "_remaining", "_want_command", "counts")

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts
        self._header = b""
        self._remaining = 0
        self._want_command = False

    def feed(self, data: bytes) -> None:
        i, size = 0, len(data)
        while i < size:
            if self._remaining:
                if self._want_command:
                    self.counts[COMMAND_NAMES.get(data[i], f"command_{data[i]}")] += 1
                    self._want_command = False
                take = min(self._remaining, size - i)
                self._remaining -= take
                i += take
                continue
            take = min(4 - len(self._header), size - i)
            self._header += data[i : i + take]
            i += take
            if len(self._header) == 4:
                self._remaining = int.from_bytes(self._header[:3], "little")
                self._want_command = self._header[3] == 0 and self._remaining > 0
                self._header = b""


class _Pair:
    """One client connection and its upstream connection."""

    __slots__ = ("client", "closed", "commands", "silent", "upstream")

    def __init__(self, client: socket.socket, commands: _CommandCounter) -> None:
        self.client = client
        self.commands = commands
        self.upstream: socket.socket | None = None
        self.closed = False
        # The server side was forgotten: the client side stays open and hears nothing.
        self.silent = False

    def close(self, reset: bool = False) -> None:
        # Every time, not only the first: the upstream socket may arrive after a cut().
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None or sock.fileno() == -1:
                continue
            if reset:
                # SO_LINGER 0: close with an RST instead of a FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


class Proxy:
    """A gevent StreamServer on 127.0.0.1 forwarding to ``upstream``, with fault switches."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.new_connections: NewConnections = "pass"
        #: Seconds added before each chunk is forwarded, in either direction.
        self.latency = 0.0
        #: Connections accepted, whatever happened to them next: the attempts the pool made.
        self.accepts = 0
        #: Commands the clients sent through, by name ("query", "ping", "reset", "quit").
        self.commands: Counter[str] = Counter()
        self._flowing = gevent.event.Event()
        self._flowing.set()
        self._pairs: set[_Pair] = set()
        self._server = StreamServer(("127.0.0.1", 0), self._handle)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def open_pairs(self) -> int:
        """Client connections the proxy holds now."""
        return len(self._pairs)

    def start(self) -> Proxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(timeout=0)
        self.cut()
        self._flowing.set()

    # -- fault switches ------------------------------------------------------------

    def cut(self, reset: bool = False) -> int:
        """Close every connection at both ends (FIN, or RST with ``reset``); how many were cut."""
        pairs, self._pairs = list(self._pairs), set()
        for pair in pairs:
            pair.close(reset)
        return len(pairs)

    def forget_upstream(self) -> int:
        """Close the server side only; the client sockets stay open and silent.

        What a dropped NAT or firewall entry looks like to the client: nothing to read,
        no FIN, and whatever it sends next goes nowhere.
        """
        count = 0
        for pair in list(self._pairs):
            upstream = pair.upstream
            if upstream is not None:
                pair.silent = True
                pair.upstream = None
                upstream.close()
                count += 1
        return count

    def stall(self) -> None:
        """Stop forwarding in both directions without closing anything (a hung network)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again whatever was held."""
        self._flowing.set()

    # -- forwarding ----------------------------------------------------------------

    def _handle(self, client: socket.socket, address: tuple[str, int]) -> None:
        self.accepts += 1
        mode = self.new_connections
        if mode == "drop":
            client.close()
            return
        if mode == "refuse":
            try:
                client.sendall(error_packet(1040, "Too many connections"))
            finally:
                client.close()
            return
        pair = _Pair(client, _CommandCounter(self.commands))
        self._pairs.add(pair)
        try:
            if mode == "hang":
                # Hold the connection, send nothing, until cut() or the client gives up.
                while client.recv(65536):
                    pass
                return
            try:
                pair.upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                return
            if pair.closed:
                return  # cut while connecting: the finally closes the new socket too
            pair.upstream.settimeout(None)
            back = gevent.spawn(self._pipe, pair, pair.upstream, True)
            try:
                self._pipe(pair, client, False)
            finally:
                back.kill(block=False)
        except OSError:
            pass
        finally:
            self._pairs.discard(pair)
            pair.close()

    def _pipe(self, pair: _Pair, source: socket.socket, to_client: bool) -> None:
        try:
            while not pair.closed:
                data = source.recv(65536)
                if not data:
                    return
                # Stalled: hold this chunk and read nothing more, so TCP pushes back.
                self._flowing.wait()
                if self.latency:
                    gevent.sleep(self.latency)
                target = pair.client if to_client else pair.upstream
                if pair.closed:
                    return
                if target is None:
                    continue  # the server side was forgotten: what the client sends is lost
                if not to_client:
                    pair.commands.feed(data)
                target.sendall(data)
        except OSError:
            return
        finally:
            # Losing the server side of a silent pair must not close its client side.
            if not (to_client and pair.silent):
                pair.close()
