"""One owner per transaction: a service commits through here, then runs its after-commit work.

Views, CLI commands and RQ tasks never commit; the import contracts in pyproject.toml keep them
from importing this module.
"""

from __future__ import annotations

from collections.abc import Callable

from storefront.extensions import db

AfterCommit = Callable[[], object]


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
