"""What request handlers share: the state and the webhook dispatcher of the running server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from flask import current_app

from .store import StripeState
from .webhooks import WebhookDispatcher

EXTENSION = "stripe_local"


@dataclass
class Runtime:
    """The state and dispatcher one app instance serves."""

    state: StripeState
    dispatcher: WebhookDispatcher

    def reset(self) -> None:
        """Forget all objects and drop queued deliveries; keep the webhook configuration."""
        self.dispatcher.reset()
        self.state.reset()


def runtime() -> Runtime:
    """Return the runtime of the app handling the current request."""
    return cast(Runtime, current_app.extensions[EXTENSION])
