"""The shop's WSGI app with cProfile around each request, for `webhook_profile.py` and
`page_profile.py`.

    gunicorn bench.profiled_wsgi:app      (SMI_PROFILE_DIR: where each worker writes its stats)

While the file `on` exists in SMI_PROFILE_DIR, each request is profiled in its own thread
(cProfile follows one thread) with the thread's CPU clock, or with the wall clock when
SMI_PROFILE_CLOCK=wall; a worker adds its requests up and writes `<pid>.pstats` in SMI_PROFILE_DIR
at most every 2 s and when it exits. Never in production.
"""

from __future__ import annotations

import atexit
import cProfile
import os
import pstats
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from wsgi import app as shop

FOLDER = Path(os.environ["SMI_PROFILE_DIR"])
CLOCK: Callable[[], float] = (
    time.perf_counter if os.environ.get("SMI_PROFILE_CLOCK") == "wall" else time.thread_time
)
_lock = threading.Lock()
_totals: pstats.Stats | None = None
_last_write = 0.0


def _write() -> None:
    with _lock:
        if _totals is not None:
            _totals.dump_stats(FOLDER / f"{os.getpid()}.pstats")


def _add(profile: cProfile.Profile) -> None:
    global _totals, _last_write
    with _lock:
        if _totals is None:
            _totals = pstats.Stats(profile)
        else:
            _totals.add(profile)
        due = time.monotonic() - _last_write > 2.0
        if due:
            _last_write = time.monotonic()
    if due:
        _write()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The shop, profiled while `on` exists; the body is read whole inside the profile."""
    if not (FOLDER / "on").exists():
        return shop(environ, start_response)  # type: ignore[no-any-return]
    profile = cProfile.Profile(CLOCK)
    profile.enable()
    try:
        answer = shop(environ, start_response)
        try:
            body = list(answer)
        finally:
            getattr(answer, "close", lambda: None)()
    finally:
        profile.disable()
        _add(profile)
    return body


atexit.register(_write)
