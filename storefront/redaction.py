"""Keep download tokens, signatures and checkout session ids out of access logs."""

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

# Request and response headers whose whole value is a secret.
SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "set-cookie", "stripe-signature"}
)
# gunicorn's header atoms: `{name}i` (request), `{name}o` (response), `{http_name}e` (environ).
HEADER_ATOM = re.compile(r"\{(?:http_)?([^}]+)\}[ioe]", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every secret part of a URL path replaced by a placeholder."""
    for pattern, replacement in SECRET_PATHS:
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


class RedactSecrets(logging.Filter):
    """A filter for access loggers (werkzeug's, gunicorn's) that redacts secret URL parts."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):  # gunicorn's atoms: one mapping, kept as its type
            record.args.update(redact_atoms(record.args))
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install() -> None:
    """Attach the filter to the access loggers this app may run under (once)."""
    for name in ("werkzeug", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
