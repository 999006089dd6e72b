"""The web app's share of the alerts: it notices when every worker is gone.

The sweeper checks the alerts, but it runs on a worker; with none left, nothing would. So after
a response has gone out (never delaying it), a web process checks the worker heartbeats at most
once a minute, and all the web processes together once a minute (a Redis key claims the turn).
`flask smi check-alerts` from cron does every check, for a shop without traffic.
"""

from __future__ import annotations

import logging
import time

from flask import Flask
from werkzeug.wrappers import Response

from storefront.maintenance.alerts import CHECK_EVERY_SECONDS, check_if_due

log = logging.getLogger("smi.alerts")


def install(app: Flask) -> None:
    """Check the worker heartbeats after a response now and then."""
    next_check = [0.0]

    @app.after_request
    def _check_now_and_then(response: Response) -> Response:
        if time.monotonic() >= next_check[0]:
            next_check[0] = time.monotonic() + CHECK_EVERY_SECONDS
            response.call_on_close(lambda: _check(app))
        return response


def _check(app: Flask) -> None:
    with app.app_context():
        try:
            check_if_due(app)
        except Exception:  # an alert check must never break the web app
            log.exception("the alert check failed")
