"""An SMTP sink on loopback: keeps every message, prints it and saves it as an .eml file."""

from __future__ import annotations

import argparse
import email
import email.policy
import socket
import threading
import time
from asyncio import AbstractServer
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class SinkHandler:
    """Collects messages; can be told to refuse the next few (for fault tests)."""

    def __init__(self, save_dir: Path | None = None, echo: bool = False) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.save_dir = save_dir
        self.echo = echo
        self.refuse_next = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Keep the message, or refuse it with a temporary error when told to."""
        with self._lock:
            if self.refuse_next > 0:
                self.refuse_next -= 1
                return "451 4.3.0 Mailbox temporarily unavailable, try again later"
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._arrived:
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
            self._arrived.notify_all()
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            (self.save_dir / f"{stamp}-{len(self.messages):04d}.eml").write_bytes(raw)
        if self.echo:
            print(_summary(message), flush=True)
        return "250 Message accepted for delivery"

    def wait_for(
        self,
        count: int = 1,
        timeout: float = 10.0,
        where: Callable[[EmailMessage], bool] | None = None,
    ) -> list[EmailMessage]:
        """Wait until `count` messages (matching `where`) have arrived; return them."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = [m for m in self.messages if where is None or where(m)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return found
                self._arrived.wait(remaining)

    def clear(self) -> None:
        """Forget every message and refusal."""
        with self._lock:
            self.messages.clear()
            self.envelopes.clear()
            self.refuse_next = 0


def _summary(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else ""
    return f"--- mail to {message['To']}: {message['Subject']}\n{text.strip()}\n--- end of mail"


def text_of(message: EmailMessage) -> str:
    """The plain-text part of a message."""
    body = message.get_body(preferencelist=("plain",))
    return body.get_content() if body is not None else ""


def html_of(message: EmailMessage) -> str:
    """The HTML part of a message."""
    body = message.get_body(preferencelist=("html",))
    return body.get_content() if body is not None else ""


class SinkController(Controller):
    """aiosmtpd's threaded controller on a socket bound here: port 0 takes a free port, and
    `port` says which one."""

    def __init__(self, handler: SinkHandler, host: str, port: int) -> None:
        super().__init__(handler, hostname=host, port=port)
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        self._listener = socket.create_server((host, port), family=family)
        self.port = int(self._listener.getsockname()[1])

    def _create_server(self) -> Awaitable[AbstractServer]:
        return self.loop.create_server(
            self._factory_invoker, sock=self._listener, ssl=self.ssl_context
        )

    def close_listener(self) -> None:
        """Release the port of a controller that never started (a started one closes it)."""
        self._listener.close()


def start_sink(
    host: str = "127.0.0.1", port: int = 0, save_dir: Path | None = None, echo: bool = False
) -> tuple[Controller, SinkHandler]:
    """Start a sink in a background thread (port 0: a free one, read back from
    `controller.port`); stop it with `controller.stop()`."""
    handler = SinkHandler(save_dir=save_dir, echo=echo)
    controller = SinkController(handler, host, port)
    try:
        controller.start()
    except BaseException:
        controller.close_listener()
        raise
    return controller, handler


def main(argv: list[str] | None = None) -> None:
    """Run the sink until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--save-dir", type=Path, default=Path("instance/mail"))
    args = parser.parse_args(argv)
    controller, _handler = start_sink(args.host, args.port, args.save_dir, echo=True)
    print(f"SMTP sink on {args.host}:{controller.port}, saving to {args.save_dir}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
