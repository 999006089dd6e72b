"""Child processes of the benchmarks: a free port to give one, stopping one, a child's own peak
memory, and a throwaway PostgreSQL cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a child this script started, by its PID: SIGTERM, then SIGKILL after 15 s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def own_peak_rss_mib() -> float:
    """This process's own peak resident set (VmHWM), in MiB.

    Not `ru_maxrss`: Linux carries that across fork and exec, so a child started by a big parent
    reports the parent's peak when its own is smaller."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary folder that listens on a unix socket only, as
    scripts/test.sh starts one: as the `postgres` user when run as root, trust authentication.

    `durable` keeps PostgreSQL's fsync on, so that a commit waits for the disk as in production;
    without it (the default) nothing is flushed, as suits a benchmark of other things."""

    def __init__(self, prefix: str = "smi-bench-pg-", *, durable: bool = False) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        if not found:
            raise RuntimeError("PostgreSQL is not installed (scripts/setup.sh test installs it)")
        self.bin = found[-1]
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.durable = durable
        self.started = False

    def _run(self, *command: str) -> None:
        subprocess.run(
            [*self.as_postgres, *command], check=True, capture_output=True, text=True, timeout=120
        )

    def start(self) -> ThrowawayPostgres:
        """initdb, then start it on a socket in its folder (fsync off unless `durable`)."""
        data = self.folder / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "smi", "--auth=trust")
        options = f"-k {self.folder} -c listen_addresses=''"
        if not self.durable:
            options += " -c fsync=off"
        self._run(
            *(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "log")),
            *("-w", "-o", options, "start"),
        )
        self.started = True
        return self

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        self._run(str(self.bin / "createdb"), "-h", str(self.folder), "-U", "smi", name)
        return f"postgresql://smi@/{name}?host={self.folder}"

    def postmaster_pid(self) -> int:
        """The PID of the server's main process (its backends are its children)."""
        return int((self.folder / "data" / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Stop it at once and delete its folder."""
        if self.started:
            subprocess.run(
                [*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data")]
                + ["-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
            self.started = False
        shutil.rmtree(self.folder, ignore_errors=True)
