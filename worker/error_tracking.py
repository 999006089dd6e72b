"""Sentry for workers started with plain `rq worker`, which (RQ 2 and later) has no Sentry option.

`python -m worker` needs nothing: it builds the app, which starts Sentry when SENTRY_DSN is set,
before the first work horse forks. Plain `rq worker` only builds the app inside each horse, too
late for the SDK's RQ integration (which tags the job and flushes before the horse exits), so give
it this class (and the queues in this order: paid work first)::

    rq worker --worker-class worker.error_tracking.SentryWorker --with-scheduler \\
        upscale default samples
"""

from __future__ import annotations

from typing import Any

from rq import Worker


class SentryWorker(Worker):
    """An RQ worker that starts Sentry (when SENTRY_DSN is set) before it takes any job."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Start Sentry from the settings, then work as RQ's own worker does."""
        from storefront import create_app

        create_app()  # storefront.error_tracking.install, the same settings as the tasks'
        return super().work(*args, **kwargs)
