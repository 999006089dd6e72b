"""The floor `page_bench.py` measures the shop's pages against: a bare Flask route.

`GET /<size>` answers `size` bytes of HTML, so that the floor sends as much as the page it is
compared with. No extension, no hook, no database, no template.
"""

from __future__ import annotations

from flask import Flask, Response

app = Flask(__name__)


@app.get("/<int:size>")
def body(size: int) -> Response:
    """`size` bytes of HTML."""
    return Response(b"x" * size, content_type="text/html; charset=utf-8")
