"""The ``/metrics`` endpoint: one thread, bounded connections, bounded time per request.

It runs in the worker's main process, beside the elector, so no client may
exhaust it: prometheus_client's own server spends a thread per connection
and waits for a request for ever (500 idle connections made 502 threads).
Here one thread multiplexes every connection with a selector; a request
must arrive within ``REQUEST_SECONDS`` and its answer leave within the same
deadline, or the connection is closed; at most ``MAX_CONNECTIONS`` are open,
and a new one beyond that closes the oldest (a real scrape sends its request
at once and is gone within milliseconds, so it is never the oldest for long).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_CONNECTIONS", "MAX_REQUEST_BYTES", "REQUEST_SECONDS", "ScrapeServer"]

logger = logging.getLogger(__name__)
MAX_CONNECTIONS = 32
REQUEST_SECONDS = 5.0  # Prometheus' default scrape timeout is 10 s: a scrape fits well inside
MAX_REQUEST_BYTES = 8192  # request line and headers; a scrape sends a few hundred bytes


@dataclass
class _Connection:
    sock: socket.socket
    deadline: float
    received: bytes = b""
    reply: bytes = field(default=b"")


class ScrapeServer:
    """Serves ``registry`` on ``GET /metrics`` (and ``/``) at ``address:port``."""

    def __init__(self, registry: Any, address: str, port: int) -> None:
        self.registry = registry
        family, _, _, _, sockaddr = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._listener = socket.create_server(sockaddr[:2], family=family, backlog=64)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._open: dict[socket.socket, _Connection] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name="celery-master-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    # -- the thread ----------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, events in self._selector.select(timeout=0.5):
                    conn = self._open.get(key.fileobj)  # type: ignore[call-overload]
                    if key.fileobj is self._listener:
                        self._accept()
                    elif conn is None:
                        continue  # closed earlier in this batch (made room for a new one)
                    elif events & selectors.EVENT_READ:
                        self._read(conn)
                    else:
                        self._write(conn)
                now = time.monotonic()
                for conn in [c for c in self._open.values() if c.deadline <= now]:
                    self._close(conn)
        except Exception:  # never into the worker; the metrics stop, the worker goes on
            logger.exception("the metrics endpoint stopped")
        finally:
            for conn in list(self._open.values()):
                self._close(conn)
            self._selector.close()
            self._listener.close()

    def _accept(self) -> None:
        """Take every waiting connection; beyond the bound, the oldest open one goes."""
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            if len(self._open) >= MAX_CONNECTIONS:
                self._close(min(self._open.values(), key=lambda c: c.deadline))
            sock.setblocking(False)
            self._open[sock] = _Connection(sock, time.monotonic() + REQUEST_SECONDS)
            self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        conn.received += chunk
        if not chunk or len(conn.received) > MAX_REQUEST_BYTES:
            self._close(conn)
        elif b"\r\n\r\n" in conn.received or b"\n\n" in conn.received:
            conn.reply = self._answer(conn.received)
            self._selector.modify(conn.sock, selectors.EVENT_WRITE)

    def _write(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.reply)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(conn.reply)
        conn.reply = conn.reply[sent:]
        if not conn.reply:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._open.pop(conn.sock, None)
        with contextlib.suppress(KeyError, ValueError):  # never registered, or closed
            self._selector.unregister(conn.sock)
        conn.sock.close()

    # -- HTTP ------------------------------------------------------------------------
    def _answer(self, request: bytes) -> bytes:
        from prometheus_client.exposition import choose_encoder

        head = request.decode("latin-1").replace("\r\n", "\n").split("\n")
        method, _, rest = head[0].partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)
        }
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", "text/plain", b"GET /metrics\n")
        if path not in ("/metrics", "/"):
            return _response("404 Not Found", "text/plain", b"GET /metrics\n")
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(self.registry)
        extra = ""
        if "gzip" in headers.get("accept-encoding", ""):
            body, extra = gzip.compress(body), "Content-Encoding: gzip\r\n"
        return _response("200 OK", content_type, body, extra, head_only=method == "HEAD")


def _response(
    status: str, content_type: str, body: bytes, extra: str = "", head_only: bool = False
) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)
