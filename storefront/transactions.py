"""One owner per transaction: a service commits through here, then runs its after-commit work.

Views, CLI commands and RQ tasks never commit; the import contracts in pyproject.toml keep them
from importing this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from storefront.extensions import db

AfterCommit = Callable[[], object]
P = ParamSpec("P")
R = TypeVar("R")


def commit(*after: AfterCommit) -> None:
    """Commit the session, then run each after-commit action (enqueueing, mail) in order.

    Nothing in `after` runs unless the commit succeeded, so a queued task or a sent email always
    finds the state it was queued for.
    """
    db.session.commit()
    for action in after:
        action()


def rollback() -> None:
    """Forget what the session holds uncommitted."""
    db.session.rollback()


def atomic(service: Callable[P, R]) -> Callable[P, R]:
    """Roll the session back when `service` raises, so a refused change leaves nothing half-done."""

    @functools.wraps(service)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return service(*args, **kwargs)
        except BaseException:
            rollback()
            raise

    return run
