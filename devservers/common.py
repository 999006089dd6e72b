"""What the local stand-in servers share: a one-line request log and a quiet request handler."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request
from werkzeug.serving import WSGIRequestHandler


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


def url_host(host: str) -> str:
    """The host to put in a URL for a server listening on `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
