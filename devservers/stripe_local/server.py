"""The app factory and the in-process server: `start_server()` returns a running `LocalStripe`."""

from __future__ import annotations

import logging
import secrets
import threading
from decimal import Decimal
from types import TracebackType

from flask import Flask, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Response

from devservers.common import QuietHandler, ServerThread, register_request_log, url_host

from . import api, control, hosted
from .context import EXTENSION, Runtime
from .errors import StripeApiError
from .store import Obj, StripeState
from .webhooks import WebhookDispatcher

log = logging.getLogger("devservers.stripe_local")


def create_app(state: StripeState, dispatcher: WebhookDispatcher) -> Flask:
    """Build the Flask app serving the API, the hosted page and the control surface."""
    app = Flask(__name__)
    app.extensions[EXTENSION] = Runtime(state=state, dispatcher=dispatcher)
    app.register_blueprint(api.bp)
    app.register_blueprint(hosted.bp)
    app.register_blueprint(control.bp)
    _register_errors(app)
    register_request_log(app, log)
    return app


def _register_errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response | HTTPException:
        if request.path.startswith(("/v1/", "/_local/")):
            return api.error_response(
                StripeApiError(error.description or error.name, status=error.code or 500)
            )
        return error

    @app.errorhandler(StripeApiError)
    def stripe_error(error: StripeApiError) -> Response:
        return api.error_response(error)


class LocalStripe:
    """A running local Stripe server: its URL, state, control methods, and `stop()`."""

    def __init__(
        self,
        *,
        state: StripeState,
        dispatcher: WebhookDispatcher,
        server: BaseWSGIServer,
        url: str,
        sweep_interval: float,
    ) -> None:
        self.state = state
        self.dispatcher = dispatcher
        self.url = url
        self.host = server.host
        self.port = server.port
        self._stopped = threading.Event()
        self._serving = ServerThread(server, name=f"stripe-local-{self.port}")
        self._sweeper = threading.Thread(
            target=self._sweep, args=(sweep_interval,), name="stripe-local-expiry", daemon=True
        )

    def _start(self) -> None:
        self._serving.start()
        self._sweeper.start()

    def _sweep(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            self.state.expire_due_sessions()

    # ----------------------------------------------------------------- configuration

    @property
    def api_base(self) -> str:
        """The value for `STRIPE_API_BASE` (same as `url`)."""
        return self.url

    @property
    def webhook_url(self) -> str | None:
        """Where webhooks are delivered."""
        return self.state.webhook_config()[0]

    @property
    def webhook_secret(self) -> str | None:
        """The secret webhooks are signed with."""
        return self.state.webhook_config()[1]

    def set_webhook(self, url: str | None, secret: str | None = None) -> str | None:
        """Deliver webhooks to `url`, signed with `secret` (generated if not given); return it."""
        if url and not secret:
            secret = "whsec_" + secrets.token_hex(16)
        self.state.set_webhook(url, secret)
        return secret

    # ----------------------------------------------------------------- driving payments

    def pay(self, session_id: str, email: str | None = None, card: str | None = None) -> Obj:
        """Pay an open session as the hosted page's Pay button does."""
        return self.state.pay(session_id, email=email, card=card)

    def decline(self, session_id: str) -> str:
        """Decline a payment attempt as the Decline button does; return the message shown."""
        return self.state.decline(session_id)

    def expire(self, session_id: str) -> Obj:
        """Expire an open session on Stripe's side (sends `checkout.session.expired`)."""
        return self.state.expire_session(session_id)

    def dispute(self, object_id: str, reason: str = "fraudulent", amount: int | None = None) -> Obj:
        """Open a dispute on a charge or PaymentIntent (sends `charge.dispute.created`)."""
        return self.state.dispute(object_id, reason=reason, amount=amount)

    def resend(self, event_id: str) -> Obj:
        """Deliver an existing event again, as a duplicate."""
        return self.state.resend(event_id)

    def create_promotion_code(
        self,
        code: str,
        *,
        percent_off: Decimal | int | None = None,
        amount_off: int | None = None,
        currency: str | None = None,
        max_redemptions: int | None = None,
        active: bool = True,
    ) -> Obj:
        """Create a promotion code (and its coupon) buyers may enter on the pay page."""
        return self.state.create_promotion_code(
            code,
            percent_off=Decimal(percent_off) if percent_off is not None else None,
            amount_off=amount_off,
            currency=currency,
            max_redemptions=max_redemptions,
            active=active,
        )

    def apply_promotion_code(self, session_id: str, code: str) -> Obj:
        """Apply a code to an open session as the pay page's Apply button does."""
        return self.state.apply_promotion_code(session_id, code)

    def set_tax_percent(self, percent: Decimal | int | str) -> None:
        """The tax rate of sessions created from now on with automatic tax."""
        with self.state.lock:
            self.state.tax_percent = Decimal(percent)

    def fail_next(
        self, status: int = 500, count: int = 1, path: str | None = None, message: str | None = None
    ) -> None:
        """Make the next `count` API calls (optionally only under `path`) answer `status`."""
        self.state.arm_failure(status, count, path=path, message=message)

    def reset(self) -> None:
        """Forget all objects, events, deliveries and armed failures; keep the webhook setup."""
        self.dispatcher.reset()
        self.state.reset()

    # ----------------------------------------------------------------- inspection

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no webhook delivery is queued or in flight; return False on timeout."""
        return self.dispatcher.wait_idle(timeout)

    def events(self, type: str | None = None) -> list[Obj]:
        """Return the events created so far, oldest first, optionally of one type."""
        with self.state.lock:
            return [dict(e) for e in self.state.events.values() if type in (None, e["type"])]

    def deliveries(self, type: str | None = None) -> list[Obj]:
        """Return the webhook delivery attempts so far, optionally for one event type."""
        with self.state.lock:
            return [dict(d) for d in self.state.deliveries if type in (None, d["type"])]

    # ----------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Stop serving, stop delivering, and release the port."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._serving.stop()
        self._sweeper.join(5)
        self.dispatcher.stop()

    def __enter__(self) -> LocalStripe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalStripe {self.url}>"


def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    *,
    public_url: str | None = None,
    retry_scale: float = 1.0,
    max_attempts: int = 8,
    ordered: bool = True,
    delivery_timeout: float = 10.0,
    sweep_interval: float = 1.0,
    tax_percent: Decimal = Decimal(0),
) -> LocalStripe:
    """Start a local Stripe server in background threads and return it (port 0 picks a free one).

    Without `webhook_secret` a random `whsec_…` is made up; read it from `.webhook_secret`.
    `tax_percent` is the one rate automatic tax charges on top of tax-exclusive prices.
    """
    state = StripeState(tax_percent=tax_percent)
    dispatcher = WebhookDispatcher(
        state,
        retry_scale=retry_scale,
        max_attempts=max_attempts,
        timeout=delivery_timeout,
        ordered=ordered,
    )
    state.listeners.append(dispatcher.enqueue)
    app = create_app(state, dispatcher)
    server = make_server(host, port, app, threaded=True, request_handler=QuietHandler)
    url = f"http://{url_host(host)}:{server.port}"
    state.public_url = (public_url or url).rstrip("/")
    local = LocalStripe(
        state=state, dispatcher=dispatcher, server=server, url=url, sweep_interval=sweep_interval
    )
    local.set_webhook(webhook_url, webhook_secret)
    local._start()
    return local
