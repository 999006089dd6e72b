"""bench/scale_bench.py on tiny numbers, so that the benchmark cannot rot unnoticed."""

from __future__ import annotations

import os
from email.message import EmailMessage
from pathlib import Path

import pytest

from bench.scale_bench import ready_mails, report, run_scale
from devservers.seaweed import hermetic_aws_environment
from devservers.smtp_sink import SinkHandler
from storefront.jobs.emails import KINDS


def mail(to: str, kind: str, message_id: str) -> EmailMessage:
    """A message as the sink keeps it."""
    message = EmailMessage()
    message["To"] = to
    message["Subject"] = str(KINDS[kind].subject)
    message["Message-ID"] = message_id
    return message


def test_ready_mails_counts_each_message_of_each_order() -> None:
    sink = SinkHandler()
    sink.messages += [
        mail("a@example.com", "ready", "<1@shop>"),
        mail("a@example.com", "ready", "<1@shop>"),  # sent again: the buyer got it twice
        mail("a@example.com", "paid", "<2@shop>"),
        mail("b@example.com", "ready", "<3@shop>"),
        mail("stranger@example.com", "ready", "<4@shop>"),
    ]
    found = ready_mails(sink, {"a@example.com": "job-a", "b@example.com": "job-b"})
    assert dict(found) == {"job-a": 2, "job-b": 1}


@pytest.mark.slow
def test_scale_bench_does_each_order_once_with_one_and_two_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in hermetic_aws_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    figures = run_scale(tmp_path, [1, 2], orders=3, size=(96, 72))

    assert [run.workers for run in figures] == [1, 2]
    for run in figures:
        assert run.problems == []
        assert run.counts == {
            "completed events": 3,
            "delivery objects": 3,
            "RQ upscales finished": 3,
            "RQ emails finished": 6,  # "payment received" and "ready" of each order
            "RQ failed": 0,
            "ready mails": 3,
        }
        assert len(run.peak_rss_kib) == run.workers
        assert all(peak > 50 * 1024 for peak in run.peak_rss_kib)  # a Python with the app
        assert 0 < run.seconds < 60
        # CPU accounting (wait4) and wall time are read a little apart: allow 10 %.
        assert 0 < run.cores_busy <= (os.cpu_count() or 1) * 1.1
    lines = report(figures, (96, 72))
    rows = [line.split() for line in lines if line.strip().startswith(("1 ", "2 "))]
    assert [row[0] for row in rows] == ["1", "2"]
    assert rows[0][3] == "1.00" and rows[0][-1] == "ok" and rows[1][-1] == "ok"
    cores = os.cpu_count() or 1
    assert any(f"N={2 * cores} cannot be faster than N={cores} except" in line for line in lines)
