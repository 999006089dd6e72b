"""A local Sentry envelope server for development and tests (never part of the production app).

It accepts what sentry-sdk sends to a DSN `http://public@127.0.0.1:<port>/<project>`:
`POST /api/<project>/envelope/`, gzip-compressed or not, in Sentry's envelope format (a header
line, then items: an item header line and its payload, `length` bytes long or up to the next
newline). It keeps every envelope in memory; tests read the events from it.

Command line (prints each event's summary)::

    python -m devservers.sentry_local --port 0
    # then SENTRY_DSN=<the DSN it prints>

In process (tests)::

    with start_server() as local:
        local.dsn                            # http://public@127.0.0.1:<port>/1
        local.wait_for_events(1)             # the parsed events, once that many have arrived
        local.raw_bodies()                   # every envelope as received (decompressed)
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from devservers.common import QuietHandler, ServerThread, url_host

log = logging.getLogger("devservers.sentry_local")

ENVELOPE_PATH = re.compile(r"/api/(?P<project>[^/]+)/envelope/?")


class EnvelopeError(ValueError):
    """A body that is not a well-formed envelope."""


@dataclass
class Item:
    """One envelope item: its header and its payload (JSON-decoded when it is JSON)."""

    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        """The item's type: event, transaction, session, attachment, check_in …"""
        return str(self.headers.get("type", ""))

    def json(self) -> Any:
        """The payload as JSON."""
        return json.loads(self.payload)


@dataclass
class Envelope:
    """One envelope as received: the project it was posted to, its header, items and body."""

    project: str
    headers: dict[str, Any]
    items: list[Item]
    body: bytes  # decompressed
    auth: str = ""  # the X-Sentry-Auth header (or the sentry_key query parameter)


def parse_envelope(body: bytes) -> tuple[dict[str, Any], list[Item]]:
    """Split an envelope into its header and items; EnvelopeError when it is malformed."""
    header_line, _, rest = body.partition(b"\n")
    try:
        headers = json.loads(header_line or b"{}")
    except ValueError as exc:
        raise EnvelopeError(f"the envelope header is not JSON: {exc}") from exc
    items: list[Item] = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        try:
            item_headers = json.loads(item_line)
        except ValueError as exc:
            raise EnvelopeError(f"an item header is not JSON: {exc}") from exc
        length = item_headers.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            if len(rest) < int(length):
                raise EnvelopeError(f"an item is shorter than its length {length}")
            payload, rest = rest[: int(length)], rest[int(length) :]
            rest = rest.removeprefix(b"\n")
        items.append(Item(item_headers, payload))
    return headers, items


@dataclass
class EnvelopeStore:
    """The envelopes received so far; threads wait on it for more."""

    envelopes: list[Envelope] = field(default_factory=list)
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    def add(self, envelope: Envelope) -> None:
        """Keep an envelope and wake whoever waits for one."""
        with self._arrived:
            self.envelopes.append(envelope)
            self._arrived.notify_all()

    def snapshot(self) -> list[Envelope]:
        """The envelopes received so far."""
        with self._arrived:
            return list(self.envelopes)

    def clear(self) -> None:
        """Forget every envelope."""
        with self._arrived:
            self.envelopes.clear()

    def wait(self, predicate: Any, timeout: float) -> Any:
        """Wait until `predicate(envelopes)` is truthy; return its value (AssertionError if not)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not (value := predicate(list(self.envelopes))):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"not within {timeout}s; received: {summaries(self.envelopes)}"
                    )
                self._arrived.wait(remaining)
            return value


def events_of(envelopes: Iterable[Envelope]) -> list[dict[str, Any]]:
    """The error events (items of type `event`) in `envelopes`, in the order they came."""
    return [item.json() for env in envelopes for item in env.items if item.type == "event"]


def summaries(envelopes: Iterable[Envelope]) -> list[str]:
    """One line per item: its type, and for an event its level and first exception or message."""
    lines = []
    for env in envelopes:
        for item in env.items:
            lines.append(
                f"{item.type}: {summary(item.json())}" if item.type == "event" else item.type
            )
    return lines


def summary(event: dict[str, Any]) -> str:
    """An event in a line: level, exception type and value (or the log message), release."""
    values = (event.get("exception") or {}).get("values") or []
    if values:
        what = f"{values[-1].get('type')}: {values[-1].get('value')}"
    else:
        what = str((event.get("logentry") or {}).get("formatted") or event.get("message") or "")
    return f"[{event.get('level')}] {what} (release {event.get('release')})"


def _decode_body(request: Request) -> bytes:
    body = request.get_data()
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding != "identity":
        raise EnvelopeError(f"unsupported Content-Encoding {encoding}")
    return body


def create_wsgi_app(store: EnvelopeStore, echo: bool = False) -> Any:
    """The WSGI app: `POST /api/<project>/envelope/` is kept; anything else is a 404."""

    @Request.application
    def application(request: Request) -> Response:
        match = ENVELOPE_PATH.fullmatch(request.path)
        if match is None or request.method != "POST":
            return Response("not found\n", status=404)
        try:
            body = _decode_body(request)
            headers, items = parse_envelope(body)
        except (EnvelopeError, OSError, EOFError) as exc:
            log.warning("rejected an envelope: %s", exc)
            return Response(f"{exc}\n", status=400)
        auth = request.headers.get("X-Sentry-Auth") or request.args.get("sentry_key", "")
        envelope = Envelope(match.group("project"), headers, items, body, auth)
        store.add(envelope)
        if echo:
            for line in summaries([envelope]):
                print(line, flush=True)
        return Response(json.dumps({"id": headers.get("event_id")}), mimetype="application/json")

    return application


class LocalSentry:
    """A running envelope server: its DSN, what it received, and `stop()`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, echo: bool = False) -> None:
        self.store = EnvelopeStore()
        server = make_server(
            host,
            port,
            create_wsgi_app(self.store, echo),
            threaded=True,
            request_handler=QuietHandler,
        )
        self.port = server.port
        self.url = f"http://{url_host(host)}:{self.port}"
        self._serving = ServerThread(server, name=f"sentry-local-{self.port}")

    @property
    def dsn(self) -> str:
        """The DSN that sends to this server (project 1)."""
        return f"http://public@{self.url.removeprefix('http://')}/1"

    def start(self) -> None:
        """Start answering requests."""
        self._serving.start()

    def stop(self) -> None:
        """Stop answering and release the port."""
        self._serving.stop()

    def envelopes(self) -> list[Envelope]:
        """Every envelope received so far."""
        return self.store.snapshot()

    def events(self) -> list[dict[str, Any]]:
        """Every error event received so far."""
        return events_of(self.store.snapshot())

    def raw_bodies(self) -> list[bytes]:
        """Every envelope received so far, as the bytes it was (decompressed)."""
        return [env.body for env in self.store.snapshot()]

    def wait_for_events(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least `count` events have arrived; return them all."""
        return self.store.wait(lambda envs: len(e := events_of(envs)) >= count and e, timeout)

    def clear(self) -> None:
        """Forget everything received."""
        self.store.clear()


@contextmanager
def start_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[LocalSentry]:
    """Run a LocalSentry for the duration of a `with` block."""
    local = LocalSentry(host, port)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted, printing one line per item received."""
    parser = argparse.ArgumentParser(description="A local Sentry envelope server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: one the kernel picks")
    args = parser.parse_args(argv)
    local = LocalSentry(args.host, args.port, echo=True)
    local.start()
    print(f"listening on {local.url}; SENTRY_DSN={local.dsn}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()


if __name__ == "__main__":
    main()
