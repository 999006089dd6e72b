"""Access logs never carry download tokens, signed original URLs or callback signatures."""

from __future__ import annotations

import logging

import pytest
import requests

from storefront.redaction import redact
from tests.conftest import LiveApp


def test_secret_url_parts_are_replaced() -> None:
    token = "ab" * 32
    line = (
        f'"GET /download/{token}/file HTTP/1.1" "GET /originals/eyJhbGciOi.abc.def HTTP/1.1" '
        '"POST /webhooks/upsampler/job-1/Zm9vYmFy HTTP/1.1" "GET /orders/j?session_id=cs_test_1"'
    )
    cleaned = redact(line)
    assert token not in cleaned and "eyJhbGciOi" not in cleaned and "Zm9vYmFy" not in cleaned
    assert "cs_test_1" not in cleaned
    assert (
        "/download/[token]/file" in cleaned and "/webhooks/upsampler/job-1/[signature]" in cleaned
    )


def test_the_served_app_logs_requests_without_the_token(
    live_app: LiveApp, caplog: pytest.LogCaptureFixture
) -> None:
    token = "cd" * 32
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        assert requests.get(f"{live_app.url}/download/{token}", timeout=5).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert any("/download/[token]" in line for line in lines)
    assert all(token not in line for line in lines)
