"""Keep download tokens, signatures, checkout session ids and passwords out of the logs."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

SECRET_PATHS = (
    (re.compile(r"(/download/)[0-9A-Za-z]{16,}"), r"\1[token]"),
    (re.compile(r"(/my-orders/)[^\s/?\"]+"), r"\1[token]"),
    (re.compile(r"(/originals/)[^\s/?\"]+"), r"\1[token]"),
    (re.compile(r"(/webhooks/upsampler/[^/\s]+/)[^\s/?\"]+"), r"\1[signature]"),
    (re.compile(r"((?:^|[?&])session_id=)[^\s&\"]+"), r"\1[session]"),
    # A Checkout Session id anywhere else (the admin's job search, a Referer).
    (re.compile(r"\bcs_(?:test|live)_[0-9A-Za-z]+"), "cs_[session]"),
)
# Secrets in free text: a log message, an exception, a field added to a line.
SECRET_TEXT = (
    # Stripe's keys and webhook secrets; a Stripe-Signature's signatures (`t=…,v1=…`).
    (re.compile(r"\b(?:sk|rk)_(?:test|live)_[0-9A-Za-z]+"), "[secret]"),
    (re.compile(r"\bwhsec_[0-9A-Za-z]+"), "whsec_[secret]"),
    (re.compile(r"\b(v[01]=)[0-9a-fA-F]{8,}"), r"\1[signature]"),
    # A password in a URL: `redis://:pw@host`, `postgresql://user:pw@host`.
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.IGNORECASE), r"\1[redacted]@"),
    (re.compile(r"\b((?:bearer|basic)\s+)[^\s\"',]+", re.IGNORECASE), r"\1[redacted]"),
    # `password=…`, `token: …`, `"api_key": "…"`, `Stripe-Signature: …`, `X-Auth-Token=…`.
    (
        re.compile(
            r"""((?:[\w-]*(?:password|passwd|secret|token|api[_-]?key|signature))["']?\s*[=:]\s*["']?)"""
            # Not a placeholder already, nor an SQL parameter marker (`= ?`, `%s`, `%(name)s`).
            r"""(?!\[|\?|%s|%\(|:[A-Za-z_])[^\s"'&,;]+""",
            re.IGNORECASE,
        ),
        r"\1[redacted]",
    ),
)

# Request and response headers whose whole value is a secret.
SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "set-cookie", "stripe-signature"}
)
# gunicorn's header atoms: `{name}i` (request), `{name}o` (response), `{http_name}e` (environ).
HEADER_ATOM = re.compile(r"\{(?:http_)?([^}]+)\}[ioe]", re.IGNORECASE)


SECRET_PATTERNS = (*SECRET_PATHS, *SECRET_TEXT)
# Any of them, in one search (case-insensitive: it finds at least what each finds). Most texts
# have no secret, an access line's atoms least of all (a date, a status, a size, each header):
# one search instead of trying every replacement was half of a page request's CPU in gunicorn.
ANY_SECRET = re.compile("|".join(f"(?:{p.pattern})" for p, _ in SECRET_PATTERNS), re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every secret part of a URL path, and every secret in it, replaced by a
    placeholder."""
    if ANY_SECRET.search(text) is None:
        return text
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_atoms(atoms: Mapping[str, object]) -> dict[str, object]:
    """Gunicorn's access-log atoms with secrets replaced: URLs redacted, secret headers hidden."""
    cleaned: dict[str, object] = {}
    for name, value in atoms.items():
        header = HEADER_ATOM.fullmatch(name)
        if header and header.group(1).lower().replace("_", "-") in SECRET_HEADERS:
            cleaned[name] = "[redacted]"
        else:
            cleaned[name] = redact(value) if isinstance(value, str) else value
    return cleaned


# What every log record has; any other attribute is a field added to the line (`extra=`).
RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_TRACEBACKS = logging.Formatter()


class RedactSecrets(logging.Filter):
    """Redacts a log record in place, for any format: its message (merged with its arguments),
    the fields added to it and its traceback. On access loggers (werkzeug's, gunicorn's) and on
    every handler of `storefront.logs`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):  # gunicorn's atoms: header atoms are hidden whole
            record.args.update(redact_atoms(record.args))
        try:
            message = record.getMessage()
        except Exception:  # a malformed logging call: logging itself reports it
            return True
        record.msg, record.args = redact(message), ()
        for name, value in list(vars(record).items()):
            if name not in RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install() -> None:
    """Attach the filter to the access loggers this app may run under (once)."""
    for name in ("werkzeug", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
