"""Log lines as readable text or one JSON object each (LOG_FORMAT), redacted, and carrying the
request, the shop job and the RQ job they belong to.

A request id (`X-Request-ID`, taken from the proxy when it is sane, else made) is set for every
request and sent back; jobs enqueued while it is set carry it in their RQ `meta`, and a task
started from such a job logs with it (see `task_fields`), so one order can be followed from the
Buy button to the mail.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.wsgi import ClosingIterator

from storefront.config import ConfigError, environment
from storefront.redaction import RECORD_ATTRIBUTES, RedactSecrets

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from rq.job import Job as RQJob

FORMATS = ("text", "json")
CONTEXT_FIELDS = ("request_id", "job_id", "rq_job_id")
REQUEST_ID_HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Most lines about a job say `job=<id>`; that id is the line's job_id when no context gives one.
# Terminal colours (werkzeug's access lines have them) mean nothing to a log shipper.
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")
JOB_IN_MESSAGE = re.compile(r"(?<![\w-])job=([0-9A-Za-z-]{8,64})")
# Loggers that RQ gives handlers of their own (`rq cron` before it imports the app): in JSON, their
# lines go to the root logger's handler, in the one format.
RQ_LOGGERS = ("rq.worker", "rq.job", "rq.scheduler", "rq.cron", "rq.worker_pool")

_request_id: ContextVar[str | None] = ContextVar("smi_request_id", default=None)
_job_id: ContextVar[str | None] = ContextVar("smi_job_id", default=None)
_rq_job_id: ContextVar[str | None] = ContextVar("smi_rq_job_id", default=None)
_CONTEXT = (("request_id", _request_id), ("job_id", _job_id), ("rq_job_id", _rq_job_id))


def log_format(config: Mapping[str, Any]) -> str:
    """The LOG_FORMAT of these settings: `text` or `json`."""
    value = str(config.get("LOG_FORMAT") or "text").strip().lower()
    if value not in FORMATS:
        raise ConfigError(f"LOG_FORMAT must be text or json, got {value!r}")
    return value


def environment_log_format() -> str:
    """LOG_FORMAT as the environment (and `.env`) give it, for processes that build no app
    (gunicorn's master)."""
    return log_format(environment())


def current_request_id() -> str | None:
    """The id of the request (or of the request behind the task) running now, if any."""
    return _request_id.get()


def bind_job(job_id: str | None) -> None:
    """Log the rest of this request's lines as about shop job `job_id`."""
    _job_id.set(job_id)


def rq_meta() -> dict[str, str]:
    """The RQ `meta` of a job enqueued now: the request id its log lines will carry."""
    request_id = _request_id.get()
    return {"request_id": request_id} if request_id else {}


@contextmanager
def task_fields(job_id: str | None, rq_job: RQJob | None) -> Iterator[None]:
    """Within it, log lines carry the task's shop job, its RQ job and the request behind it."""
    request_id = rq_job.meta.get("request_id") if rq_job is not None else None
    tokens = (
        _request_id.set(request_id if isinstance(request_id, str) else None),
        _job_id.set(job_id),
        _rq_job_id.set(rq_job.id if rq_job is not None else None),
    )
    try:
        yield
    finally:
        for (_name, var), token in zip(_CONTEXT, tokens, strict=True):
            var.reset(token)


def accepted_request_id(value: str | None) -> str | None:
    """A request id sent by the client or proxy, if it is one we may log: 1 to 64 characters of
    A-Z, a-z, 0-9, `.`, `_` and `-`."""
    if value and SANE_REQUEST_ID.fullmatch(value):
        return value
    return None


class RequestIds:
    """WSGI middleware: each request gets an id (the proxy's `X-Request-ID` when sane, else a new
    uuid4), set for its log lines and sent back on its response, whatever made the response.

    The id is cleared once the response's body is closed, so nothing the thread logs later
    carries a stale one (gunicorn's access line takes it from the response's header). A body
    that is a `wsgi.file_wrapper` is handed back as it is, for the server's sendfile: there the
    id stays until the thread's next request.
    """

    def __init__(self, wsgi_app: WSGIApplication) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request_id = accepted_request_id(environ.get("HTTP_X_REQUEST_ID")) or uuid.uuid4().hex
        environ["smi.request_id"] = request_id
        _request_id.set(request_id)
        _job_id.set(None)
        _rq_job_id.set(None)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = [(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER.lower()]
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, exc_info)

        body = self.wsgi_app(environ, start)
        if hasattr(body, "filelike"):
            return body
        return ClosingIterator(body, [clear_context])


def clear_context() -> None:
    """Forget this thread's request id, job id and RQ job id."""
    for _name, variable in _CONTEXT:
        variable.set(None)


class AddContext(logging.Filter):
    """Gives a record the request id, shop job id and RQ job id known where it was logged (a
    field the record was given wins, None included; `job=<id>` in the message stands in for an
    unknown job id)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT:
            if not hasattr(record, name):
                setattr(record, name, var.get())
        if getattr(record, "job_id", None) is None:
            if found := JOB_IN_MESSAGE.search(record.getMessage()):
                record.job_id = found.group(1)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, the context fields
    that are known, any field added with `extra=`, and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        created = dt.datetime.fromtimestamp(record.created, dt.UTC)
        fields: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": ANSI_STYLE.sub("", record.getMessage()),
            "pid": record.process,
        }
        for name, value in vars(record).items():
            if name not in RECORD_ATTRIBUTES and value is not None and name not in fields:
                fields[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        # ASCII only: no character in the line that a reader could take for a line break.
        return json.dumps(fields, default=str)


class TextFormatter(logging.Formatter):
    """Today's readable line, `time LEVEL logger message`, then the context fields known that
    the message does not already say, in brackets."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        said = {"job_id": "job=", "rq_job_id": "rq_job="}
        known = [
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None))
            and f"{said.get(name, name + '=')}{value}" not in record.message
        ]
        return f"{line} [{' '.join(known)}]" if known else line


class StdoutHandler(logging.StreamHandler[Any]):
    """Writes to whatever `sys.stdout` is when the line is written."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def make_handler(fmt: str) -> logging.Handler:
    """A stdout handler in format `fmt` that redacts and adds the context fields."""
    handler = StdoutHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactSecrets())
    handler.addFilter(AddContext())
    return handler


def configure(fmt: str) -> None:
    """This process's logging: the `smi` loggers at INFO on stdout in `fmt`; in JSON, every other
    logger too (RQ's, werkzeug's, libraries'), through the root logger."""
    handler = make_handler(fmt)
    smi = logging.getLogger("smi")
    root = logging.getLogger()
    for logger in (smi, root):
        for old in [h for h in logger.handlers if isinstance(h, StdoutHandler)]:
            logger.removeHandler(old)
    smi.addHandler(handler)
    smi.setLevel(logging.INFO)
    smi.propagate = False
    if fmt == "json":
        from rq.logutils import ColorizingStreamHandler

        root.addHandler(handler)
        for name in RQ_LOGGERS:
            logger = logging.getLogger(name)
            for own in [h for h in logger.handlers if isinstance(h, ColorizingStreamHandler)]:
                logger.removeHandler(own)
            logger.propagate = True


def access_fields(atoms: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a JSON access line, from gunicorn's atoms (redacted before)."""
    status = str(atoms.get("s", ""))
    query = atoms.get("q")
    return {
        "remote_addr": atoms.get("h"),
        "method": atoms.get("m"),
        "path": f"{atoms.get('U')}?{query}" if query else atoms.get("U"),
        "status": int(status) if status.isdigit() else status,
        "bytes": atoms.get("B"),
        "duration_ms": atoms.get("M"),
        "referer": atoms.get("f"),
        "user_agent": atoms.get("a"),
        # The app's id of the request, as it answered; none when gunicorn answered alone.
        "request_id": atoms.get("{x-request-id}o"),
    }


def _bind_job_of_url(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    if values and isinstance(values.get("job_id"), str):
        bind_job(values["job_id"])


def install(app: Flask) -> None:
    """Logging in the app's LOG_FORMAT, redacted; request ids on every request; the shop job of
    a URL with `<job_id>` on that request's lines."""
    configure(log_format(app.config))
    app.wsgi_app = RequestIds(app.wsgi_app)  # type: ignore[method-assign]
    app.url_value_preprocessor(_bind_job_of_url)
