"""What the local stand-in servers share: a request log, a quiet handler, a server thread."""

from __future__ import annotations

import logging
import selectors
import socket
import threading

from flask import Flask, Response, g, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler


def register_request_log(app: Flask, log: logging.Logger) -> None:
    """Log one line per request: method, path and status (never query strings or bodies)."""

    @app.after_request
    def log_request(response: Response) -> Response:
        # Path only: query strings and bodies may carry emails or signatures, headers API keys.
        note = g.get("note")
        log.info(
            "%s %s %s%s",
            request.method,
            request.path,
            response.status_code,
            f" ({note})" if note else "",
        )
        return response


class QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler without its own access log (the app logs one line per request)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class ServerThread:
    """Serve a werkzeug server from a daemon thread; `stop()` returns without a polling delay."""

    def __init__(self, server: BaseWSGIServer, name: str) -> None:
        self.server = server
        # socketserver's serve_forever() looks for a shutdown request only every poll_interval
        # (0.5 s by default), so every stop waited for it; a byte on this pair wakes the loop.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        """Start answering requests."""
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.server, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping.is_set():
                ready = {key.fileobj for key, _events in selector.select()}
                if self.server in ready and not self._stopping.is_set():
                    self.server.handle_request()
                self.server.service_actions()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting connections, wait for the serving thread, and release the port."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake_writer.send(b"\0")
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self.server.server_close()
        self._wake_reader.close()
        self._wake_writer.close()


def url_host(host: str) -> str:
    """The host to put in a URL for a server listening on `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
