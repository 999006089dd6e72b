"""What a maintenance operation did, or in a dry run would do, and why it could not run."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("smi.maintenance")

SAMPLE = 50  # examples kept of what an operation touched


class MaintenanceError(RuntimeError):
    """An operation could not run; the message says why, and nothing was deleted."""


@dataclass
class Report:
    """What an operation did (or, in a dry run, would do)."""

    operation: str
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    sample: list[str] = field(default_factory=list)
    bytes: int = 0
    export_path: str | None = None
    seconds: float = 0.0

    def add(self, name: str, amount: int = 1) -> None:
        """Count `amount` more of `name`."""
        self.counts[name] = self.counts.get(name, 0) + amount

    def note(self, item: str) -> None:
        """Keep a few examples of what was touched."""
        if len(self.sample) < SAMPLE:
            self.sample.append(item)

    def summary(self) -> str:
        """One line: the operation, whether it was a dry run, and its counts."""
        verb = "would" if self.dry_run else "did"
        counts = ", ".join(f"{name} {count}" for name, count in self.counts.items()) or "nothing"
        size = f", {self.bytes / 1_000_000:.1f} MB" if self.bytes else ""
        export = f", export {self.export_path}" if self.export_path else ""
        return f"{self.operation} ({verb}): {counts}{size}{export}"


def finish(report: Report, started: float) -> Report:
    """Note how long the operation took (from `time.monotonic()` at `started`) and log it."""
    report.seconds = round(time.monotonic() - started, 3)
    log.info("%s in %.2fs", report.summary(), report.seconds)
    return report
