"""Error tracking with Sentry: on when SENTRY_DSN is set, and nothing leaves the process otherwise.

What is reported, each once: an unhandled exception in a view (the 500 page), an RQ job that
failed for good (after its last retry), and any log line that carries a traceback
(`log.exception`). Error lines without a traceback (a job failed and was refunded, Stripe refused
a refund) stay log lines and alert mails; in Sentry they are breadcrumbs of the next event.

Buyers' emails, download tokens, Checkout Session ids, API keys, secret headers, cookies, query
strings with `session_id`, form fields and SQL parameters are scrubbed from every event and
breadcrumb before it is sent (`scrub_event`, `scrub_breadcrumb`); request bodies are never sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any, cast

from flask import Flask

from storefront.config import ConfigError
from storefront.redaction import SECRET_HEADERS, redact

if TYPE_CHECKING:
    from sentry_sdk._types import Breadcrumb, BreadcrumbHint, Event, Hint

log = logging.getLogger("smi.error_tracking")

DISTRIBUTION = "sell-my-images"
FILTERED = "[Filtered]"

# Secrets and personal data inside any text: an email address, a download token (64 hex), Stripe
# keys and signing secrets; `redaction.redact` adds URL tokens and Checkout Session ids.
SECRET_TEXT = (
    (re.compile(r"[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[email]"),
    (re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])"), "[token]"),
    (re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[0-9A-Za-z]+"), "[stripe key]"),
    (re.compile(r"\bwhsec_[0-9A-Za-z]+"), "[webhook secret]"),
    # The values SQLAlchemy writes into a database error's message.
    (re.compile(r"\[parameters: [^\n]*"), "[parameters: [Filtered]]"),
)
# Keys (of headers, form fields, local variables, extra data) whose whole value goes, compared in
# lower case with `-` as `_`.
SECRET_KEYS = frozenset(
    {name.replace("-", "_") for name in SECRET_HEADERS}
    | {
        "api_key",
        "cookies",
        "csrf_token",
        "download_token",
        "email",
        "password",
        "passwd",
        "secret",
        "secret_key",
        "session_id",
        "token",
        "x_forwarded_for",
        "x_real_ip",
        "db.params",
    }
)

# Name fragments the SDK filters on top of its own (auth, token, secret, password, session, key …).
DENY_TERMS = ["email", "signature", "cookie", "forwarded", "-ip", "remote-", "via"]
SHOP_JOB_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}")

_initialised_with: tuple[str, str, str] | None = None


def install(app: Flask) -> None:
    """Start the Sentry SDK for this process if SENTRY_DSN is set (once per process and DSN)."""
    dsn = app.config.get("SENTRY_DSN") or ""
    if dsn:
        init(dsn, release(app.config), environment(app.config))


def release(config: Mapping[str, Any]) -> str:
    """The release events name: SENTRY_RELEASE, or `sell-my-images@<installed version>`."""
    if config.get("SENTRY_RELEASE"):
        return str(config["SENTRY_RELEASE"])
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"{DISTRIBUTION}@{version}"


def environment(config: Mapping[str, Any]) -> str:
    """The environment events name: SENTRY_ENVIRONMENT, or SMI_ENV."""
    return str(config.get("SENTRY_ENVIRONMENT") or config.get("SMI_ENV") or "development")


def init(dsn: str, release_name: str, environment_name: str) -> None:
    """Initialise the SDK with the Flask, RQ and SQLAlchemy integrations and the scrubbers.

    A process that already runs it with the same settings keeps it: an RQ work horse inherits
    its worker's client, whose RQ integration flushes before the horse exits.
    """
    global _initialised_with
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.rq import RqIntegration
    from sentry_sdk.integrations.sqlalchemy import SqlalchemyIntegration
    from sentry_sdk.utils import BadDsn

    wanted = (dsn, release_name, environment_name)
    if _initialised_with == wanted and sentry_sdk.get_client().is_active():
        return
    try:
        sentry_sdk.init(
            dsn=dsn,
            release=release_name,
            environment=environment_name,
            integrations=[
                FlaskIntegration(),
                RqIntegration(),
                SqlalchemyIntegration(),
                LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
            ],
            auto_enabling_integrations=False,  # no Redis or boto3 breadcrumbs with their keys
            # What the SDK collects by itself (sentry-sdk 2.75 replaced send_default_pii=False
            # with this): no user, cookies, bodies (forms and Stripe's payloads carry buyers'
            # data), SQL parameters or task arguments; secret headers, query parameters and
            # variables filtered by name. scrub_event then cleans what is left.
            data_collection={
                "user_info": False,
                "cookies": {"mode": "off"},
                "http_headers": {"request": {"mode": "denylist", "terms": DENY_TERMS}},
                "http_bodies": [],
                "url_query_params": {"mode": "denylist", "terms": DENY_TERMS},
                "database_query_data": False,
                "queues": False,
                "stack_frame_variables": {"mode": "denylist", "terms": DENY_TERMS},
                "graphql": {"document": False, "variables": False},
                "gen_ai": {"inputs": False, "outputs": False},
            },
            before_send=scrub_event,
            before_breadcrumb=scrub_breadcrumb,
        )
    except BadDsn as exc:
        raise ConfigError(f"SENTRY_DSN is not a Sentry DSN: {exc}") from None
    _initialised_with = wanted
    log.info("error tracking on: release %s, environment %s", release_name, environment_name)


def shutdown() -> None:
    """Send what is pending and stop the SDK in this process (tests that started it)."""
    global _initialised_with
    import sentry_sdk

    client = sentry_sdk.get_client()
    if client.is_active():
        client.close()
    sentry_sdk.get_global_scope().set_client(None)
    _initialised_with = None


def capture_unhandled(error: BaseException) -> None:
    """Report an exception a view did not handle (the 500 handler renders a page for it).

    Flask sends `got_request_exception`, which the SDK listens to, only for exceptions no error
    handler takes; the app's catch-all handler takes them all, so it reports them here. The
    handler's `log.exception` of the same exception is then dropped as a duplicate.
    """
    import sentry_sdk
    from sentry_sdk.utils import event_from_exception

    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    event, hint = event_from_exception(
        error, client_options=client.options, mechanism={"type": "flask", "handled": False}
    )
    sentry_sdk.capture_event(event, hint=hint)


def scrub_text(text: str) -> str:
    """`text` without emails, tokens, Stripe ids and keys, or secret URL parts."""
    text = redact(text)
    for pattern, replacement in SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in SECRET_KEYS


def scrub(value: Any) -> Any:
    """A copy of `value` (JSON-like data) with secret keys' values and secret text replaced."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {
            key: FILTERED if _is_secret_key(key) else scrub(item) for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    if value is None or isinstance(value, bool | int | float | datetime):
        return value
    return scrub_text(repr(value))  # an object a breadcrumb holds: only its scrubbed text


def scrub_event(event: Event, hint: Hint) -> Event | None:
    """before_send: drop error lines without a traceback; scrub the rest; tag the RQ job."""
    if "log_record" in hint and "exc_info" not in hint:
        return None  # a log line without a traceback: a breadcrumb, not an event
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("cookies", None)
        request.pop("data", None)
    cleaned = scrub(event)
    rq_job = (cleaned.get("extra") or {}).get("rq-job")
    if isinstance(rq_job, dict) and rq_job.get("job_id"):
        tags = cleaned.setdefault("tags", {})
        tags["rq_job_id"] = rq_job["job_id"]
        # The shop's job id: the tasks about a job take it as their first id argument.
        shop_job = SHOP_JOB_ID.search(str(rq_job.get("description") or ""))
        if shop_job:
            tags["job_id"] = shop_job.group(0)
    return cast("Event", cleaned)


def scrub_breadcrumb(crumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb | None:
    """before_breadcrumb: SQL without its parameters; every breadcrumb's text scrubbed."""
    if crumb.get("category") == "query" and isinstance(crumb.get("data"), dict):
        crumb["data"] = {k: v for k, v in crumb["data"].items() if k != "db.params"}
    return cast("Breadcrumb", scrub(crumb))
