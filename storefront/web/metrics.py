"""`GET /metrics` for Prometheus, and the HTTP figures of every request.

`install(app)` times each request and counts it by endpoint (the URL rule's endpoint name, never
the path, so a token in a URL never becomes a label) and status, and adds the route. The route
answers only with `Authorization: Bearer <METRICS_TOKEN>`; without the setting, or with another
token, it is a 404 like any unknown page.

Under gunicorn each worker process writes its HTTP figures to prometheus_client's files in
`PROMETHEUS_MULTIPROC_DIR` (gunicorn.conf.py makes one), and a scrape answered by any of them
adds up all of them. The shop's own figures come from Redis, where every process, workers on
other hosts included, adds to them (`storefront/jobs/metrics.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, abort, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.wrappers import Response

from storefront.jobs.metrics import ShopCollector

log = logging.getLogger("smi.metrics")

ENDPOINT_KEY = "smi.endpoint"  # WSGI environ: the endpoint the request was routed to
UNMATCHED = "unmatched"  # no route matched (404, 405)

# In this process's memory, or, in prometheus_client's multiprocess mode, in its files.
HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "smi_http_requests",
    "HTTP requests answered, by endpoint and status",
    ["endpoint", "status"],
    registry=HTTP_REGISTRY,
)
HTTP_SECONDS = Histogram(
    "smi_http_request_seconds",
    "Time to answer an HTTP request (until its body starts), by endpoint and status",
    ["endpoint", "status"],
    registry=HTTP_REGISTRY,
)

bp = Blueprint("metrics", __name__)

StartResponse = Callable[..., Any]


def install(app: Flask) -> None:
    """Count and time every request, and serve `GET /metrics`."""
    app.wsgi_app = _Measured(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(_note_endpoint)
    app.register_blueprint(bp)
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ and not multiprocess():
        log.warning(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
            "/metrics shows this process's HTTP figures only"
        )


def multiprocess() -> bool:
    """Whether this process writes its figures to PROMETHEUS_MULTIPROC_DIR's files."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ and values.ValueClass is not values.MutexValue


class _Measured:
    """WSGI middleware: the time and status of each response, under the endpoint Flask chose."""

    def __init__(self, wsgi_app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]):
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ["500"]

        def recording(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        try:
            return self.wsgi_app(environ, recording)
        finally:
            endpoint = str(environ.get(ENDPOINT_KEY, UNMATCHED))
            HTTP_REQUESTS.labels(endpoint, status[0]).inc()
            HTTP_SECONDS.labels(endpoint, status[0]).observe(time.perf_counter() - started)


def _note_endpoint(response: Response) -> Response:
    rule = request.url_rule
    request.environ[ENDPOINT_KEY] = rule.endpoint if rule is not None else UNMATCHED
    return response


@bp.get("/metrics")
def scrape() -> Response:
    """The figures in Prometheus's text format, for the bearer of METRICS_TOKEN only."""
    token = current_app.config.get("METRICS_TOKEN")
    if not token or not bearer_matches(request.headers.get("Authorization", ""), str(token)):
        abort(404)
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess():
        MultiProcessCollector(registry)
    else:
        registry.register(_InProcess())
    registry.register(ShopCollector(current_app._get_current_object()))  # type: ignore[attr-defined]
    response = Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether `Authorization: Bearer <token>` names `token`, compared in constant time (their
    digests, so that not even the length shows in the time taken)."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(
        hashlib.sha256(given.strip().encode()).digest(), hashlib.sha256(token.encode()).digest()
    )


class _InProcess:
    """The HTTP figures of this process alone (no PROMETHEUS_MULTIPROC_DIR: `flask run`)."""

    def collect(self) -> Iterable[Metric]:
        """HTTP_REGISTRY's families."""
        return HTTP_REGISTRY.collect()
