"""A TCP relay in threads between a client and a server, whose connections a test can cut: a network drop."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

from tests.support.wait import wait_until

#: SO_LINGER on, zero seconds: close() sends a reset, as a dropped route or a dead middlebox would.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class Forwarder:
    """Relays 127.0.0.1:<port> to ``target_port``; ``cut()`` resets every connection, ``refuse()`` new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        # accept() wakes up now and then to notice close(): closing a listening socket from another
        # thread does not wake a blocked accept() everywhere.
        self._listener.settimeout(0.05)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._refusing = False
        self._closing = False
        self.accepted = 0
        self.refused = 0
        #: Every byte the client sent, in order of arrival.
        self.sent = bytearray()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Forwarder:
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target: Callable[..., object], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                refusing = self._refusing
                self.refused += refusing
                self.accepted += not refusing
            if refusing:
                _reset(client)
                continue
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets.update((client, server))
            self._spawn(self._pump, client, server, True)
            self._spawn(self._pump, server, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client:
                    with self._lock:
                        self.sent += data
                sink.sendall(data)
        except OSError:
            pass
        self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        with self._lock:
            for sock in sockets:
                self._sockets.discard(sock)
        for sock in sockets:
            _reset(sock)

    def connections(self) -> int:
        """Open client connections (each has a server side too)."""
        with self._lock:
            return len(self._sockets) // 2

    def requests(self, marker: bytes) -> int:
        """How many request lines the client sent that contain ``marker``."""
        with self._lock:
            lines = bytes(self.sent).split(b"\r\n")
        return sum(1 for line in lines if marker in line and line.endswith(b" HTTP/1.1"))

    def refuse(self, refusing: bool = True) -> None:
        with self._lock:
            self._refusing = refusing

    def cut(self) -> None:
        """Reset every open connection, both ways."""
        with self._lock:
            sockets = list(self._sockets)
        self._drop(*sockets)
        wait_until(lambda: self.connections() == 0, 5, message="connections cut")

    def close(self) -> None:
        self._closing = True
        self.cut()
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down, or the peer reset it first
    sock.close()
