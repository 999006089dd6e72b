"""The app a task runs in, built once per process, after RQ has forked the work horse."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask
from rq import get_current_job

from storefront import logs, settings

_app: Flask | None = None
_app_pid: int | None = None


def task_app() -> Flask:
    """The Flask app for tasks in this process (a fresh one after a fork)."""
    global _app, _app_pid
    if _app is None or _app_pid != os.getpid():
        from storefront import create_app
        from worker.engines.imaging import restrict_loaders

        restrict_loaders()  # libvips in a worker reads JPEG, PNG and WebP only
        _app = create_app()
        _app_pid = os.getpid()
    return _app


@contextmanager
def task_context(job_id: str | None = None) -> Iterator[Flask]:
    """The app context a task runs in, with the settings the admin saved looked up afresh; its
    log lines carry `job_id`, the RQ job's id and the request id the RQ job was queued with."""
    app = task_app()
    with app.app_context(), logs.task_fields(job_id, get_current_job()):
        settings.refresh(app)
        try:
            yield app
        except Exception as exc:
            from storefront.maintenance.alerts import note_task_failure

            note_task_failure(app, exc)  # storage or the database down: the alert checker mails
            raise


def use_app(app: Flask | None) -> None:
    """Make tasks in this process use `app` (tests running tasks in-process)."""
    global _app, _app_pid
    _app, _app_pid = app, os.getpid() if app is not None else None
