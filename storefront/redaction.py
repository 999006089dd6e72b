"""Keep download tokens and callback signatures out of access logs."""

from __future__ import annotations

import logging
import re

SECRET_PATHS = (
    (re.compile(r"(/download/)[0-9A-Za-z]{16,}"), r"\1[token]"),
    (re.compile(r"(/originals/)[^\s/?\"]+"), r"\1[token]"),
    (re.compile(r"(/webhooks/upsampler/[^/\s]+/)[^\s/?\"]+"), r"\1[signature]"),
    (re.compile(r"([?&]session_id=)[^\s&\"]+"), r"\1[session]"),
)


def redact(text: str) -> str:
    """`text` with every secret part of a URL path replaced by a placeholder."""
    for pattern, replacement in SECRET_PATHS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """A filter for access loggers (werkzeug's, gunicorn's) that redacts secret URL parts."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install() -> None:
    """Attach the filter to the access loggers this app may run under (once)."""
    for name in ("werkzeug", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
